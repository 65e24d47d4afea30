"""Model section of the GPU check: DiT3D training step (fwd + bwd) per attention backend.

    python -m benchmarks.bench_model [--quick] [--no-compile] [--checkpointing] [--device cuda|cpu]
    python benchmarks/bench_model.py --quick          (same, as a script)

GPU (default): DiT3D-XL, 2-stage DFM (factor (1, 2, 2), patch (1, 2, 2), C = 16), 13 latent
frames x 32 x 32 tokens per frame (N = 13312), batch 1, bf16 parameters and activations (as
DeepSpeed bf16 trains), every available attention backend, eager and torch.compile'd blocks.
Reports ms/step (median, CUDA events), model TFLOP/s from the analytic `training_flops`
(3x forward, recomputation not counted), MFU against the dense bf16 peak (752 TFLOP/s H100,
786 H200, or --peak-tflops), peak memory and the first (compiling) step's time.
CPU (or --tiny): a tiny model in float32, eager only: a smoke test that the script works.
Exit status 1 when any configuration fails (the others still run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dfm_video` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench, env_line, print_table  # noqa: E402
from dfm_video.models import (  # noqa: E402
    available_attention_backends,
    build_model,
    parameter_counts,
    stage_patch_sizes,
    training_flops,
)

PEAK_TFLOPS = {"H200": 786.0, "H100": 752.0}  # measured dense bf16 peaks (TrainConfig.peak_tflops)


def _config_classes():
    """ModelConfig, DFMConfig (`dfm_video.config` imports its YAML loader lazily: no pyyaml needed)."""
    from dfm_video.config.schema import DFMConfig, ModelConfig

    return ModelConfig, DFMConfig


def level_shapes_for_grid(grid: Sequence[int], patches, temporal_mode: str) -> list[tuple[int, int, int]]:
    """(T, H, W) of every stage whose patch maps it onto the token grid (inverse of token_grid)."""
    Tg, Hg, Wg = grid
    shapes = []
    for pt, ph, pw in patches:
        T = Tg * pt - (pt - 1) if (pt > 1 and temporal_mode == "causal") else Tg * pt
        shapes.append((T, Hg * ph, Wg * pw))
    return shapes


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_config(
    model_cfg, dfm_cfg, grid, batch: int, device: torch.device, dtype: torch.dtype, reps: int, warmup: int = 2
):
    """Build the model, time one training step; returns (ms, first-step s, peak GiB)."""
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: DiT3D-XL's init takes seconds on a CPU
        model = build_model(model_cfg, dfm_cfg).to(dtype=dtype).train()
    shapes = level_shapes_for_grid(grid, model.patches, dfm_cfg.temporal_mode)
    C, S = model_cfg.in_channels, dfm_cfg.num_stages
    levels = [torch.randn(batch, C, *s, device=device, dtype=dtype) for s in shapes]
    targets = [torch.randn_like(x) for x in levels]
    t = torch.rand(batch, S, device=device)
    active = torch.ones(batch, S, dtype=torch.bool, device=device)  # compute does not depend on it
    y = torch.randint(0, model_cfg.num_classes, (batch,), device=device)

    def step() -> None:
        for p in model.parameters():
            p.grad = None
        out = model(levels, t, active, y)
        loss = sum((o.float() - v.float()).pow(2).mean() for o, v in zip(out, targets))
        loss.backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    step()  # includes compilation when model_cfg.compile
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    first_s = time.perf_counter() - t0
    ms = bench(step, device, reps, warmup=warmup)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model = levels = targets = None
    return ms, first_s, peak_gib


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (CPU: the tiny smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="DiT3D-XL", help="registry size on GPU")
    p.add_argument("--tiny", action="store_true", help="tiny model and grid (forced on CPU)")
    p.add_argument("--frames", type=int, default=13, help="latent frames (token frames with pt = 1)")
    p.add_argument("--tokens", type=int, default=32, help="tokens per frame side (32 -> 32 x 32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backends", default="all", help="comma list, or `all` available on the device")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (always skipped on CPU)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument(
        "--kernels",
        default="auto",
        choices=("auto", "triton", "torch"),
        help="fused-op backend (model.kernels; `auto` with compiled blocks means torch)",
    )
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    tiny = args.tiny or not on_gpu
    ModelConfig, DFMConfig = _config_classes()
    dfm_cfg = DFMConfig(num_stages=2, factors=[(1, 2, 2)], stage_probs=[0.9, 0.1])
    if tiny:
        base = ModelConfig(name="DiT3D-S", depth=2, hidden_size=64, num_heads=4, in_channels=4, num_classes=10)
        grid = (5, 4, 4)
    else:
        base = ModelConfig(name=args.size, in_channels=16, num_classes=700)
        grid = (args.frames, args.tokens, args.tokens)
    base = dataclasses.replace(
        base, patch_size=(1, 2, 2), activation_checkpointing=args.checkpointing, kernels=args.kernels
    )
    dtype = torch.bfloat16 if on_gpu else torch.float32
    reps = args.reps or (3 if not on_gpu else 5 if args.quick else 20)
    patches = stage_patch_sizes(base.patch_size, dfm_cfg.factors)
    latent = level_shapes_for_grid(grid, patches, dfm_cfg.temporal_mode)[-1]
    flops = training_flops(base, dfm_cfg, latent) * args.batch
    counts = parameter_counts(base, dfm_cfg)
    peak = peak_tflops(device, args.peak_tflops)

    print(env_line(device))
    print(
        f"{'tiny' if tiny else args.size}: {counts['total'] / 1e6:.1f}M params (DFM extra {counts['extra_pct']:.2f}%), "
        f"latent {latent} x C={base.in_channels}, grid {grid} = {math.prod(grid)} tokens, batch {args.batch}, "
        f"{str(dtype).removeprefix('torch.')}, training {flops / 1e12:.2f} TFLOP/step, "
        f"checkpointing {'on' if args.checkpointing else 'off'}, kernels {args.kernels}, "
        f"peak {peak or 'unknown'} TFLOP/s"
    )
    backends = available_attention_backends(device) if args.backends == "all" else args.backends.split(",")
    modes = ["eager"] + ([] if (args.no_compile or not on_gpu) else ["compiled"])
    rows, status = [], 0
    for backend in backends:
        for mode in modes:
            cfg = dataclasses.replace(base, attention=backend, compile=(mode == "compiled"))
            torch._dynamo.reset()
            try:
                ms, first_s, mem = run_config(cfg, dfm_cfg, grid, args.batch, device, dtype, reps)
            except Exception as e:  # noqa: BLE001 - report and go on with the other configurations
                status = 1
                rows.append([backend, mode, "error", "-", "-", "-", "-", f"{type(e).__name__}: {str(e)[:120]}"])
                continue
            finally:
                gc.collect()
                if on_gpu:
                    torch.cuda.empty_cache()
            tflops = flops / (ms * 1e-3) / 1e12
            mfu = f"{100 * tflops / peak:.1f}" if peak else "-"
            rows.append([backend, mode, ms, tflops, mfu, mem, first_s, ""])
    print_table(
        f"DiT3D training step (fwd + bwd), median of {reps} (ms); MFU % of {peak or '?'} TFLOP/s",
        ["attention", "mode", "ms/step", "TFLOP/s", "MFU %", "peak GiB", "1st step s", "note"],
        rows,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
