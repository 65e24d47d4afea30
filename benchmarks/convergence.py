"""DFM (2 stages) vs flow matching (1 stage) at equal model, batch, data and step budget.

    python -m benchmarks.convergence --preset cpu [--shards DIR] [--seeds 0,1,2] [--out outputs/convergence]
    python -m benchmarks.convergence --preset gpu --shards DIR   # ~10 minutes per seed on one H100

Both methods train the same DiT3D on the same shards (FM reads them recomposed to one level) with
the same seed, batch and optimizer, in one process (the DeepSpeed machinery is not what is
compared). Every `eval_every` steps the EMA weights sample `num_eval` videos with the same noise
seed and 40 NFE (DFM [30, 10], FM 40) and FVD (I3D) and FID (Inception, every frame) are computed
against the real clips decoded from the shards. Every seed (default 0, 1, 2) changes the
initialisation, the noise/timesteps and the data order. Writes `curves.png` (mean +- std over
seeds), `results.json` and a table, and reports per seed the steps DFM needs to reach FM's final
score over the steps FM needs (interpolated between evaluations), as mean +- std over seeds. Small real sets make the
absolute values noisy and biased upwards; compare the curves, not the numbers with the paper.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dfm_video.autoencoders import load_autoencoder
from dfm_video.config import Config, load_config, single_stage
from dfm_video.data.mixture import open_data
from dfm_video.dfm import TimestepParams, dfm_objective, recompose
from dfm_video.eval.frechet import feature_statistics, frechet_distance
from dfm_video.evaluate import build_fid, build_fvd
from dfm_video.media import to_uint8
from dfm_video.models import build_model
from dfm_video.sampling import Generator, decode_latents, generate
from dfm_video.train.ema import EMA
from dfm_video.train.param_groups import param_groups


@dataclass(frozen=True)
class Preset:
    overrides: tuple[str, ...]
    steps: int
    eval_every: int
    num_eval: int
    dfm_steps: tuple[int, int] = (30, 10)


PRESETS = {
    # minutes on 2 CPU cores: the demo's model on the demo's pixel-codec shards
    "cpu": Preset(
        (
            "model.depth=4",
            "model.hidden_size=128",
            "model.num_heads=4",
            "model.in_channels=3",
            "model.patch_size=[1,8,8]",
            "model.num_classes=3",
            "model.attention=sdpa",
            "model.kernels=torch",
            "distributed.micro_batch_size=8",
            "distributed.global_batch_size=8",
            "optim.lr=5e-4",
            "optim.warmup_steps=50",
            "train.ema_decay=0.99",
        ),
        steps=600,
        eval_every=150,
        num_eval=32,
    ),
    # ~10 minutes on one H100 (bf16 autocast), same shards, a DiT3D-S/2 at full width
    "gpu": Preset(
        (
            "model.name=DiT3D-S",
            "model.in_channels=3",
            "model.patch_size=[1,8,8]",
            "model.num_classes=3",
            "model.attention=auto",
            "model.kernels=auto",
            "distributed.micro_batch_size=64",
            "distributed.global_batch_size=64",
            "optim.lr=3e-4",
            "optim.warmup_steps=200",
            "train.ema_decay=0.999",
        ),
        steps=6000,
        eval_every=1000,
        num_eval=256,
    ),
}


def method_config(preset: Preset, shards: str, method: str, seed: int) -> Config:
    extra = [f"data.shards={shards}", "data.num_workers=0", f"train.seed={seed}"]
    extra += [f"sample.steps=[{preset.dfm_steps[0]},{preset.dfm_steps[1]}]"]
    cfg = load_config(None, list(preset.overrides) + extra)
    return single_stage(cfg) if method == "fm" else cfg


def real_clips(data) -> list[np.ndarray]:
    """The training clips themselves, decoded from the shards with their codec: the real set."""
    codec = data.info.autoencoder
    ae = load_autoencoder(codec["kind"], codec.get("path", ""), pixel_patch=(int(codec["temporal"]), *codec["spatial"]))
    out = []
    for i in range(len(data.dataset)):
        levels, _ = data.dataset[i]
        lat = recompose([x[None] for x in levels], data.info.factors, data.info.temporal_mode)
        out.append(to_uint8(ae.decode(lat)[0]))
    return out


def train_loop(cfg: Config, steps: int, device: torch.device, eval_every: int, on_eval, seed: int) -> None:
    """Train cfg's model in this process for `steps`; every `eval_every` steps (and at the end)
    call on_eval(step, generator with the EMA weights, data, last loss output). `seed` sets the
    initialisation, the per-step noise/timesteps and (through train.seed) the data order."""
    # both methods train on unit-std levels (the paper's video setting): DFM with the per-level
    # statistics of the shards, FM with the whole-latent statistics stored beside them
    data = open_data(cfg, f"{cfg.dfm.num_stages}-stage run")
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dfm).to(device)
    opt = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.optim.warmup_steps)))
    ema = EMA(model, cfg.train.ema_decay)
    ema_model = build_model(cfg.model, cfg.dfm).to(device).eval()
    meta = data.dataset_meta()
    params = TimestepParams.from_config(cfg.dfm)
    batches = data.batches(rank=0, world_size=1, start=0, device=device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    for step in range(1, steps + 1):
        levels, y = next(batches)
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + step)
        with amp:
            out = dfm_objective(
                model,
                levels,
                y,
                params,
                class_dropout=cfg.model.class_dropout,
                null_class=model.null_class,
                generator=g,
            )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        if step % eval_every == 0 or step == steps:
            ema_model.load_state_dict({n: s for n, s in zip(ema.names, ema.shadow)}, strict=True)
            on_eval(step, Generator(model=ema_model, cfg=cfg, meta=meta, source=Path(cfg.name)), data, out)


def train_and_eval(
    method: str, preset: Preset, shards: str, seed: int, device: torch.device, extractors, real_stats, log
) -> list[dict]:
    cfg = method_config(preset, shards, method, seed)
    rows = []
    t_start = time.perf_counter()

    def on_eval(step, gen, data, out) -> None:
        labels = [i % len(data.labels) for i in range(preset.num_eval)]
        latents, _ = generate(gen, labels, steps=list(cfg.sample.steps), tau=cfg.sample.tau, seed=1234 + seed)
        fake = [to_uint8(v) for v in decode_latents(gen, latents)]
        row = {
            "method": method,
            "seed": seed,
            "step": step,
            "loss": float(out.loss.detach()),
            "wall_s": round(time.perf_counter() - t_start, 1),
        }
        for name, fn in extractors.items():
            mu, sig = feature_statistics(fn([torch.from_numpy(c) for c in fake]).numpy(), f"{name} {method}")
            row[name] = float(frechet_distance(*real_stats[name], mu, sig, method="eigh"))
        rows.append(row)
        log(row)

    train_loop(cfg, preset.steps, device, preset.eval_every, on_eval, seed)
    return rows


def steps_to_reach(rows: list[dict], metric: str, target: float) -> Optional[float]:
    """First step where the curve reaches `target`, interpolated linearly between evaluations
    (evaluations are coarse; this keeps the ratio from snapping to multiples of eval_every).
    None if it never does."""
    prev = None
    for r in rows:
        if r[metric] <= target:
            if prev is None or prev[metric] == r[metric]:
                return float(r["step"])
            frac = (prev[metric] - target) / (prev[metric] - r[metric])
            return prev["step"] + frac * (r["step"] - prev["step"])
        prev = r
    return None


def seed_summary(rows: list[dict], metric: str) -> dict:
    """One seed: FM's final score, the steps each method needs to reach it, and DFM/FM as a ratio."""
    dfm = [r for r in rows if r["method"] == "dfm"]
    fm = [r for r in rows if r["method"] == "fm"]
    target = fm[-1][metric]
    s_dfm, s_fm = steps_to_reach(dfm, metric, target), steps_to_reach(fm, metric, target)
    return {
        "fm_final": target,
        "dfm_final": dfm[-1][metric],
        "dfm_steps": s_dfm,
        "fm_steps": s_fm,
        "ratio": (s_dfm / s_fm) if s_dfm is not None and s_fm else None,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def plot(rows: list[dict], metrics: list[str], path: Path) -> None:
    """Mean curve over seeds with a +-1 std band per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, m in zip(np.atleast_1d(axes), metrics):
        for method, style in (("dfm", "o-"), ("fm", "s--")):
            steps = sorted({r["step"] for r in rows if r["method"] == method})
            stats = [mean_std([r[m] for r in rows if r["method"] == method and r["step"] == st]) for st in steps]
            mu, sd = np.array([a for a, _ in stats]), np.array([b for _, b in stats])
            ax.plot(steps, mu, style, label={"dfm": "DFM (2 stages)", "fm": "flow matching"}[method])
            ax.fill_between(steps, mu - sd, mu + sd, alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(m.upper() + " (mean +- std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ap.add_argument(
        "--shards", default="outputs/demo/shards", help="pyramid shards (make demo writes outputs/demo/shards)"
    )
    ap.add_argument("--out", default="outputs/convergence")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's step budget")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--num-eval", type=int, default=None)
    ap.add_argument("--metrics", default="fvd,fid")
    ap.add_argument(
        "--seeds", default="0,1,2", help="comma-separated; each changes initialisation, noise/timesteps and data order"
    )
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    preset = Preset(
        preset.overrides,
        args.steps or preset.steps,
        args.eval_every or preset.eval_every,
        args.num_eval or preset.num_eval,
        preset.dfm_steps,
    )
    seeds = [int(v) for v in args.seeds.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    metrics = args.metrics.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {"fvd": lambda: build_fvd(None, device, 9), "fid": lambda: build_fid(None, device, 64)}
    extractors = {m: builders[m]().fn for m in metrics}
    real = real_clips(open_data(method_config(preset, args.shards, "dfm", seeds[0]), "real set").buckets[0])
    real_stats = {
        m: feature_statistics(fn([torch.from_numpy(c) for c in real]).numpy(), f"{m} real")
        for m, fn in extractors.items()
    }
    print(
        f"real set: {len(real)} clips of {real[0].shape} from {args.shards}; device {device}; seeds {seeds}", flush=True
    )
    log_file = open(out / "log.jsonl", "w")

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()

    rows = []
    for seed in seeds:
        for method in ("dfm", "fm"):
            rows += train_and_eval(method, preset, args.shards, seed, device, extractors, real_stats, log)
    summary = {}
    for m in metrics:
        per_seed = {seed: seed_summary([r for r in rows if r["seed"] == seed], m) for seed in seeds}
        ratios = [v["ratio"] for v in per_seed.values() if v["ratio"] is not None]
        summary[m] = {
            "per_seed": per_seed,
            "fm_final": mean_std([v["fm_final"] for v in per_seed.values()]),
            "dfm_final": mean_std([v["dfm_final"] for v in per_seed.values()]),
            "ratio": mean_std(ratios) if ratios else None,
            "seeds_where_dfm_reached_fm_final": len(ratios),
        }
    plot(rows, metrics, out / "curves.png")
    (out / "results.json").write_text(
        json.dumps(
            {
                "preset": args.preset,
                "preset_values": preset.__dict__,
                "seeds": seeds,
                "num_real": len(real),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(
        f"\n{'step':>6} "
        + " ".join(f"{meth + ' ' + m:>16}" for m in metrics for meth in ("dfm", "fm"))
        + "   (mean +- std over seeds)"
    )
    for step in sorted({r["step"] for r in rows}):
        cells = []
        for m in metrics:
            for meth in ("dfm", "fm"):
                mu, sd = mean_std([r[m] for r in rows if r["step"] == step and r["method"] == meth])
                cells.append(f"{mu:9.1f} +- {sd:5.1f}")
        print(f"{step:>6} " + " ".join(cells))
    for m, s in summary.items():
        (fm_mu, fm_sd), (d_mu, d_sd) = s["fm_final"], s["dfm_final"]
        line = (
            f"{m}: final FM {fm_mu:.1f} +- {fm_sd:.1f}, DFM {d_mu:.1f} +- {d_sd:.1f}; "
            "steps DFM needs to reach FM's final score / FM's steps: "
        )
        if s["ratio"] is None:
            line += "DFM never reached it in any seed"
        else:
            reached = f"{s['seeds_where_dfm_reached_fm_final']}/{len(seeds)}"
            line += f"{s['ratio'][0]:.2f}x +- {s['ratio'][1]:.2f} ({reached} seeds reached it; goal <= 0.6x)"
        print(line)
    print(f"wrote {out / 'curves.png'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
