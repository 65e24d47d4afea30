"""Sampling time per video: DFM [30, 10] vs flow matching 40 steps at equal NFE, side by side.

    python -m benchmarks.sampling_time [--size demo|xl] [--repeats 5] [--device cpu|cuda] [--dtype fp32|bf16]

Both models share size and latent shape; weights are random (time does not depend on them). Runs
alternate DFM / FM to cancel drift in machine load; the ratio is what to read (absolute times only
count on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dfm_video.config import load_config
from dfm_video.models import build_model
from dfm_video.sampling import Generator, generate

SIZES = {
    # name: (overrides, latent (C, T, H, W))
    "demo": (
        ["model.depth=4", "model.hidden_size=128", "model.num_heads=4", "model.in_channels=48", "model.num_classes=3"],
        (48, 9, 8, 8),
    ),
    "s": (["model.name=DiT3D-S", "model.in_channels=16", "model.num_classes=3"], (16, 5, 32, 32)),
    "xl": (["model.name=DiT3D-XL", "model.in_channels=16"], (16, 13, 64, 64)),
}


def build(size: str, stages: int, device: torch.device, dtype: torch.dtype) -> Generator:
    overrides, latent = SIZES[size]
    if stages == 1:
        overrides = overrides + ["dfm=single_stage"]  # sample.steps [30, 10] -> [40]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dfm).to(device=device, dtype=dtype).eval()
    meta = {"labels": [], "latent_shape": list(latent), "stats": None, "autoencoder": {"kind": "pixel"}}
    return Generator(model=model, cfg=cfg, meta=meta, source=Path("random"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=list(SIZES), default="demo")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    runs = {
        "DFM [30, 10]": (build(args.size, 2, device, dtype), [30, 10]),
        "FM 40": (build(args.size, 1, device, dtype), [40]),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, (gen, steps) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            generate(gen, [0], steps=steps, tau=0.9)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {dev}, size {args.size}, latent {SIZES[args.size][1]}, "
        f"{args.dtype}, 40 NFE, batch 1, median of {args.repeats}"
    )
    print(f"{'method':<14} {'s/video':>9} {'ms/NFE':>8}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:<14} {v:9.3f} {1000 * v / 40:8.2f}")
    print(f"DFM / FM time ratio: {med['DFM [30, 10]'] / med['FM 40']:.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
