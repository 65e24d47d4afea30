"""Why the demo's fine stage did not learn with a 48-channel codec: short controlled runs, one factor at a time.

    python -m benchmarks.demo_ablation --shards48 DIR --shards3 DIR [--steps 400] [--variants a,b]

DIR are pixel-codec shards of the demo clips with patch (1, 4, 4) (48 channels, the old demo) and
(1, 1, 1) (3 channels, RGB: the pyramid is a true spatial frequency split). Every variant trains the
demo's DiT3D in this process (same seed, batch 8, AdamW 5e-4) and then samples 12 clips (4 per
class, seed 1234) with each sampler; printed: high-frequency energy ratio samples /
training clips (goal 0.75-1.33), mean PSNR to the nearest training clip, std of the generated finest
level in standardised units (data: 1.0).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import torch

from benchmarks.convergence import real_clips, train_loop
from dfm_video.config import load_config
from dfm_video.demo.measures import fine_level_std, quality_summary
from dfm_video.dfm import LevelStats
from dfm_video.sampling import decode_latents, generate

BASE = (
    "model.depth=4",
    "model.hidden_size=128",
    "model.num_heads=4",
    "model.num_classes=3",
    "model.attention=sdpa",
    "model.kernels=torch",
    "distributed.micro_batch_size=8",
    "distributed.global_batch_size=8",
    "optim.lr=5e-4",
    "optim.warmup_steps=50",
    "train.ema_decay=0.99",
    "data.num_workers=0",
)
C48 = ("model.in_channels=48", "model.patch_size=[1,2,2]")
C3 = ("model.in_channels=3", "model.patch_size=[1,8,8]")
FM = ("dfm=single_stage",)  # sample.steps [30, 10] -> [40]
# name: (codec, training overrides); every DFM model is sampled with several samplers (no retraining)
VARIANTS = {
    "c48_dfm": ("48", C48),
    "c48_fm": ("48", C48 + FM),
    "c3_dfm": ("3", C3),
    "c3_fm": ("3", C3 + FM),
    "c3_dfm_p70": ("3", C3 + ("dfm.stage_probs=[0.7,0.3]",)),
    "c3_dfm_p50": ("3", C3 + ("dfm.stage_probs=[0.5,0.5]",)),
}
# sampler name: (DFM steps, FM steps, cfg scale)
SAMPLERS = {"cfg1.5": ([30, 10], [40], 1.5), "cfg1.0": ([30, 10], [40], 1.0)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards48", required=True)
    ap.add_argument("--shards3", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default=None, help="append result rows (JSON lines) here")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    for name in args.variants.split(","):
        codec, over = VARIANTS[name]
        shards = args.shards48 if codec == "48" else args.shards3
        cfg = load_config(None, list(BASE) + list(over) + [f"data.shards={shards}", f"train.seed={args.seed}"])
        t0 = time.perf_counter()
        rows = []

        def on_eval(step, gen, data, out) -> None:
            real = torch.stack(
                [torch.from_numpy(c).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in real_clips(data.buckets[0])]
            )
            y = [i % 3 for i in range(12)]
            stats = LevelStats.from_dict(gen.meta["stats"]) if gen.meta.get("stats") else None
            for sampler, (dfm_steps, fm_steps, cfg_scale) in SAMPLERS.items():
                steps = dfm_steps if cfg.dfm.num_stages > 1 else fm_steps
                lat, _ = generate(gen, y, steps=steps, tau=0.9, cfg_scale=cfg_scale, seed=1234)
                row = {
                    "variant": name,
                    "sampler": sampler,
                    "steps": args.steps,
                    "seed": args.seed,
                    "train_s": round(time.perf_counter() - t0, 1),
                    **quality_summary(decode_latents(gen, lat), real),
                }
                if cfg.dfm.num_stages > 1:
                    row["fine_std"] = fine_level_std(lat, cfg.dfm.factors, cfg.dfm.temporal_mode, stats)
                row["last_loss"] = float(out.loss.detach())
                rows.append(row)

        train_loop(cfg, args.steps, device, args.steps, on_eval, args.seed)
        for row in rows:
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
