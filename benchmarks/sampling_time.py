"""Sampling time per video: DFM [30, 10] vs flow matching 40 steps at equal NFE, with the sampler's
levers (attention backend, compiled blocks, CUDA graphs, batched CFG), old and new settings side by side.

    python -m benchmarks.sampling_time [--size demo|s|xl] [--repeats 5] [--device cpu|cuda] [--dtype fp32|bf16]
                                       [--cfg-scale 4.0] [--levers old,new] [--quick]

Levers (one row each, DFM and FM both):
  old   model.attention=sdpa, eager blocks, no CUDA graphs
  new   model.attention=auto, compiled blocks (model.compile=true), CUDA graphs (sample.cuda_graphs)
  compiled / graphs   one lever at a time on top of `auto` attention (to see what each brings)
Both models share size and latent shape; weights are random (time does not depend on them). Runs
alternate DFM / FM to cancel drift in machine load. Guidance (`--cfg-scale` != 1) batches the
conditional and unconditional halves into one call (2 rows per video). Printed: s/video, ms per
network call, DFM / FM ratio (goal <= 1.02), videos per GPU-hour and GPU-hours for FVD10K.
On CPU compiled blocks and CUDA graphs are left out (only the ratio means anything there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from dfm_video.config import config_from_dict, single_stage
from dfm_video.models import build_model
from dfm_video.sampling import Generator, generate

SIZES = {
    # name: (model section, latent (C, T, H, W))
    "demo": (dict(depth=4, hidden_size=128, num_heads=4, in_channels=48, num_classes=3), (48, 9, 8, 8)),
    "s": (dict(name="DiT3D-S", in_channels=16, num_classes=3), (16, 5, 32, 32)),
    "xl": (dict(name="DiT3D-XL", in_channels=16), (16, 13, 64, 64)),
}
# lever: (model.attention, model.compile, CUDA graphs)
LEVERS = {
    "old": ("sdpa", "false", False),
    "compiled": ("auto", "true", False),
    "graphs": ("auto", "false", True),
    "new": ("auto", "true", True),
}
NFE = 40


def build(size: str, stages: int, device: torch.device, dtype: torch.dtype, attention: str, compiled: str) -> Generator:
    model, latent = SIZES[size]
    # a dict, not `--set` strings: the GPU image may lack PyYAML
    flag = {"true": True, "false": False}.get(compiled, compiled)
    cfg = config_from_dict({"model": dict(model, attention=attention, compile=flag)}, f"sampling_time --size {size}")
    if stages == 1:
        cfg = single_stage(cfg)  # sample.steps [30, 10] -> [40]
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.dfm).to(device=device, dtype=dtype).eval()
    meta = {"labels": [], "latent_shape": list(latent), "stats": None, "autoencoder": {"kind": "pixel"}}
    return Generator(model=net, cfg=cfg, meta=meta, source=Path("random"))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default=None, help="default: xl on CUDA, demo on CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (!= 1: batched CFG, 2 rows/video)")
    ap.add_argument("--levers", default=None, help="comma list of " + ", ".join(LEVERS) + " (default: old,new)")
    ap.add_argument("--quick", action="store_true", help="1 repeat")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    size = args.size or ("xl" if on_gpu else "demo")
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if on_gpu else "fp32")) == "bf16" else torch.float32
    repeats = 1 if args.quick else args.repeats
    levers = (args.levers or "old,new").split(",")
    for lever in levers:
        if lever not in LEVERS:
            raise ValueError(f"--levers: unknown lever {lever!r}, expected some of {list(LEVERS)}")
    if not on_gpu:
        dropped = [lv for lv in levers if LEVERS[lv][1] == "true" or LEVERS[lv][2]]
        if dropped:
            print(f"CPU: levers {dropped} left out (compiled blocks and CUDA graphs are GPU levers)")
        levers = [lv for lv in levers if lv not in dropped]
    budget = float(os.environ.get("GPU_CHECK_SECTION_BUDGET_S") or 1e9)
    t_start = time.perf_counter()

    dev = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {dev}, size {size}, latent {SIZES[size][1]}, {str(dtype).removeprefix('torch.')}, {NFE} NFE, "
        f"batch 1, cfg {args.cfg_scale}, median of {repeats}"
    )
    print(f"{'lever':<9} {'method':<13} {'s/video':>9} {'ms/call':>8} {'videos/GPU-h':>13} {'FVD10K GPU-h':>13}")
    status = 0
    for lever in levers:
        attention, compiled, graphs = LEVERS[lever]
        if time.perf_counter() - t_start > budget:
            print(f"{lever:<9} skipped: section budget {budget:.0f} s used")
            continue
        runs = {
            "DFM [30, 10]": (build(size, 2, device, dtype, attention, compiled), [30, 10]),
            "FM 40": (build(size, 1, device, dtype, attention, compiled), [40]),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for rep in range(repeats + 1):  # the first round warms up (compiles, captures)
            for name, (gen, steps) in runs.items():
                if on_gpu:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                generate(gen, [0], steps=steps, tau=0.9, cfg_scale=args.cfg_scale, cuda_graphs=graphs)
                if on_gpu:
                    torch.cuda.synchronize()
                if rep:
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            print(f"{lever:<9} {k:<13} {v:9.3f} {1000 * v / NFE:8.2f} {3600 / v:13.0f} {10_000 * v / 3600:13.1f}")
        ratio = med["DFM [30, 10]"] / med["FM 40"]
        backend = runs["FM 40"][0].model.attention_backend(device)
        print(f"{lever:<9} DFM / FM time ratio: {ratio:.3f} (goal <= 1.02); attention {backend}")
        del runs
    return status


if __name__ == "__main__":
    raise SystemExit(main())
