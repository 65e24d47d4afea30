"""Training-step section of the GPU check: DiT3D-XL fwd + bwd, changing one factor at a time.

    python -m benchmarks.bench_step [--quick] [--checkpointing] [--device cuda|cpu] [--budget-s S]
    python benchmarks/bench_step.py --quick          (same, as a script)

GPU: DiT3D-XL at the k700 shape: latent C=16 x 13 x 64 x 64, patch (1, 2, 2), DFM with 2 stages
and factor (1, 2, 2), i.e. 13 x 32 x 32 = 13,312 tokens; batch 1; bf16 weights and activations
(as DeepSpeed bf16 trains); fwd + bwd, no optimizer step. Rows, in priority order (a row whose
estimated time would end past --budget-s is reported as skipped, so the section fits its slot):
    baseline     best attention backend, kernels triton, 2 stages (DFM), eager blocks
    kernels-off  the same with kernels torch (the pure-torch references)
    FM           1 stage, same latent and tokens (plain flow matching) vs DFM's 2
    attention    every other available attention backend (sdpa, flash, xformers)
    compile      torch.compile'd blocks with kernels torch (not with --quick; ~1 min to compile?)
Reports ms/step (median, CUDA events), TFLOP/s from the analytic `training_flops` of that row's
config (3x forward; recomputation not counted), MFU against the measured dense bf16 matmul peak
(752 TFLOP/s H100, 786 H200, from torch.cuda.get_device_name; or --peak-tflops), peak memory,
and the step-time ratio to the baseline. Every row is printed as soon as it is measured.
CPU: a tiny float32 model, Triton in the interpreter: a smoke test that the script works.
Exit status 1 when a row fails (the others still run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dfm_video` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_model import _config_classes, level_shapes_for_grid, peak_tflops, run_config  # noqa: E402
from benchmarks.common import env_line, print_table  # noqa: E402
from dfm_video.models import available_attention_backends, stage_patch_sizes, training_flops  # noqa: E402


@dataclasses.dataclass
class Row:
    """One configuration: what it changes from the baseline, and its settings."""

    group: str
    attention: str
    kernels: str
    stages: int
    compiled: bool = False
    est_s: float = 20.0  # rough GPU wall time (build, first step, warmup, reps): eager XL ~0.4 s/step


def _default_budget(quick: bool) -> float:
    # gpu_check.sh passes the seconds this section may use, so the whole check fits 8 minutes.
    env = os.environ.get("GPU_CHECK_SECTION_BUDGET_S")
    return float(env) if env else (120.0 if quick else 240.0)


def plan(backends: list[str], triton_ok: bool, quick: bool, on_gpu: bool) -> list[Row]:
    """The rows in priority order; the first is the baseline every ratio refers to."""
    best = backends[0]  # available_attention_backends lists the one `auto` picks first
    kern = "triton" if triton_ok else "torch"
    rows = [Row("baseline", best, kern, 2)]
    if triton_ok:
        rows.append(Row("kernels-off", best, "torch", 2))
    rows.append(Row("FM", best, kern, 1))
    rows += [Row("attention", b, kern, 2) for b in backends[1:]]
    if on_gpu and not quick:
        rows.append(Row("compile", best, "torch", 2, compiled=True, est_s=90.0))  # Inductor fwd + bwd: a guess
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repetitions, no compiled row")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", default="DiT3D-XL", help="registry size on GPU")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip a row that would end past this many seconds (default: $GPU_CHECK_SECTION_BUDGET_S, "
        "else 120 with --quick, 240 without)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device peak for MFU")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    from kernels import triton_unavailable_reason

    ModelConfig, DFMConfig = _config_classes()
    dfm = {S: DFMConfig(num_stages=S, factors=[(1, 2, 2)] * (S - 1), stage_probs=[1.0 / S] * S) for S in (1, 2)}
    if on_gpu:
        base = ModelConfig(name=args.size, in_channels=16, num_classes=700, patch_size=(1, 2, 2))
        grid, batch, dtype = (13, 32, 32), 1, torch.bfloat16
        reps, warmup = args.reps or (5 if args.quick else 10), 2
    else:  # the interpreter runs every Triton program in Python: keep it tiny
        base = ModelConfig(depth=1, hidden_size=48, num_heads=4, in_channels=4, num_classes=10, patch_size=(1, 2, 2))
        grid, batch, dtype = (3, 4, 4), 1, torch.float32
        reps, warmup = args.reps or 1, 0  # the first (timed separately) step is the warmup
    base = dataclasses.replace(base, activation_checkpointing=args.checkpointing)
    budget = args.budget_s if args.budget_s is not None else _default_budget(args.quick)
    peak = peak_tflops(device, args.peak_tflops)
    reason = triton_unavailable_reason(device)
    latent = level_shapes_for_grid(grid, stage_patch_sizes(base.patch_size, dfm[2].factors), "causal")[-1]

    print(f"# training step benchmark: {env_line(device)}")
    print(
        f"{args.size if on_gpu else 'tiny'}: latent {latent} x C={base.in_channels}, grid {grid} = "
        f"{math.prod(grid)} tokens, batch {batch}, {str(dtype).removeprefix('torch.')}, fwd + bwd, "
        f"checkpointing {'on' if args.checkpointing else 'off'}, peak {peak or 'unknown'} TFLOP/s, "
        f"triton: {reason or 'ok'}",
        flush=True,
    )
    rows = plan(available_attention_backends(device), reason is None, args.quick, on_gpu)
    header = [
        "row",
        "attention",
        "kernels",
        "stages",
        "blocks",
        "ms/step",
        "TFLOP/s",
        "MFU %",
        "x baseline",
        "peak GiB",
        "1st step s",
        "note",
    ]
    table, status, base_ms, start = [], 0, None, time.perf_counter()
    for row in rows:
        cells = [row.group, row.attention, row.kernels, row.stages, "compiled" if row.compiled else "eager"]
        if on_gpu and time.perf_counter() - start + row.est_s > budget:
            table.append(cells + ["-"] * 6 + [f"skipped: past the {budget:.0f} s budget"])
            print("measured:", "  ".join(map(str, table[-1])), flush=True)
            continue
        cfg = dataclasses.replace(base, attention=row.attention, kernels=row.kernels, compile=row.compiled)
        flops = training_flops(cfg, dfm[row.stages], latent) * batch
        torch._dynamo.reset()
        try:
            ms, first_s, mem = run_config(cfg, dfm[row.stages], grid, batch, device, dtype, reps, warmup)
        except Exception as e:  # noqa: BLE001 - report and go on with the other rows
            status = 1
            table.append(cells + ["error"] + ["-"] * 5 + [f"{type(e).__name__}: {str(e)[:100]}"])
            print("measured:", "  ".join(map(str, table[-1])), flush=True)
            continue
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        if row.group == "baseline":
            base_ms = ms
        tflops = flops / (ms * 1e-3) / 1e12
        mfu = f"{100 * tflops / peak:.1f}" if peak else "-"
        ratio = f"{base_ms / ms:.2f}x" if base_ms else "-"
        table.append(cells + [ms, tflops, mfu, ratio, mem, first_s, ""])
        # printed now too: a section killed by its timeout still leaves the rows it measured
        print("measured:", "  ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in table[-1]), flush=True)
    print_table(
        f"DiT3D training step (fwd + bwd), median of {reps} (ms); MFU % of {peak or '?'} TFLOP/s; "
        "x baseline > 1 is faster",
        header,
        table,
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
