"""Attention section of the GPU check: every `model.attention` backend that runs here, checked and timed.

    python -m benchmarks.bench_attention [--quick] [--write-table] [--device cuda|cpu]

1. Correctness: each backend's forward and gradients against a float64 softmax reference at a small
   shape (max abs error; bf16 on CUDA, fp32 on CPU).
2. Which kernel SDPA's own pick runs at (1, 16, 13312, 72) bf16: the top CUDA kernels of one
   forward + backward in the profiler (`cudnn_generated_fort_native_sdpa_sm90...` = cuDNN,
   `flash_fwd...`/`flash_bwd...` = flash, `fmha_cutlass...` = memory-efficient).
3. Forward + backward TFLOP/s per backend at head dims 72, 64, 80, 128 and 13,312 / 32,768 tokens
   (16 heads, batch 1, bf16). FLOPs: forward 4 B H N^2 Dh (QK^T and AV), forward + backward
   3x forward, the convention of every TFLOP/s in docs/performance.md (FlashAttention papers count
   the backward as 2.5x: multiply by 3.5/3 to compare with them).
`--write-table` stores the 13,312-token rows in dfm_video/models/attention_measured.json under the
GPU's name: `model.attention: auto` then picks the fastest there. `--quick` (CPU smoke test): tiny
shapes, two repetitions. Rows that would not fit $GPU_CHECK_SECTION_BUDGET_S are skipped and listed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench, env_line, print_table  # noqa: E402
from dfm_video.models.attention import (  # noqa: E402
    attention,
    available_attention_backends,
    device_name,
    pick_auto,
    resolve_attention_backend,
)
from dfm_video.models.attention_table import write_row  # noqa: E402

HEAD_DIMS = (72, 64, 80, 128)  # the model's own (DiT3D-XL: 1152 / 16) first
TOKENS = (13312, 32768)  # k700 (13 x 32 x 32) and k700-long
HEADS = 16


def attention_tflop(batch: int, heads: int, tokens: int, head_dim: int) -> float:
    """Forward + backward TFLOP of one attention core (3x the forward's 4 B H N^2 Dh)."""
    return 3 * 4 * batch * heads * tokens**2 * head_dim / 1e12


def max_errors(backend: str, device: torch.device, head_dim: int) -> tuple[float, float]:
    """(forward, gradient) max abs error against float64 at (1, 4, 512, Dh)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(1, 4, 512, head_dim, generator=g) for _ in range(3)]
    dout = torch.randn(1, 4, 512, head_dim, generator=g)
    x64 = [t.double().requires_grad_() for t in qkv]
    x = [t.to(device, dtype).clone().requires_grad_() for t in qkv]
    out = attention(*x, backend)
    out.backward(dout.to(device, dtype))
    w = torch.softmax(x64[0] @ x64[1].transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    ref = w @ x64[2]
    ref.backward(dout.double())
    fwd = (out.double().cpu() - ref).abs().max().item()
    grad = max((a.grad.double().cpu() - b.grad).abs().max().item() for a, b in zip(x, x64))
    return fwd, grad


def sdpa_kernels(device: torch.device, tokens: int, head_dim: int) -> list[tuple[str, float]]:
    """(kernel name, CUDA ms) of SDPA's own pick, top 4 by time, for one forward + backward."""
    q, k, v = (
        torch.randn(1, HEADS, tokens, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    step = lambda: attention(q, k, v, "sdpa").sum().backward()  # noqa: E731
    step()
    torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    rows = [(e.key, e.device_time_total / 1e3) for e in prof.key_averages()]
    return sorted(rows, key=lambda r: -r[1])[:4]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 repetitions (the CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write-table", action="store_true", help="store the 13k-token rows for `auto`")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    budget = float(os.environ.get("GPU_CHECK_SECTION_BUDGET_S") or (60 if args.quick else 240))
    t_start = time.perf_counter()
    tokens_list = (128,) if args.quick and not on_gpu else (1024,) if args.quick else TOKENS
    head_dims = HEAD_DIMS[:2] if args.quick and not on_gpu else HEAD_DIMS
    reps = args.reps or (2 if args.quick else 10)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    print(env_line(device))
    status = 0

    # 1. correctness, every backend at every head dim
    backends = {dh: available_attention_backends(device, dh) for dh in head_dims}
    rows = []
    for dh in head_dims:
        for b in backends[dh]:
            resolve_attention_backend(b, device, dh)
            fwd, grad = max_errors(b, device, dh)
            tol = 2e-2 if on_gpu else 1e-5
            ok = fwd <= tol and grad <= 5 * tol
            status |= 0 if ok else 1
            rows.append((b, dh, fwd, grad, "ok" if ok else "FAIL"))
    print_table("attention vs float64 reference (1, 4, 512, Dh)", ["backend", "Dh", "fwd err", "grad err", ""], rows)

    # 2. the kernel SDPA's own pick runs at the k700 shape
    if on_gpu:
        kern = sdpa_kernels(device, 256 if args.quick else 13312, 72)
        print_table("SDPA's own pick at (1, 16, 13312, 72) bf16, fwd+bwd: top CUDA kernels", ["kernel", "ms"], kern)

    # 3. timings, most important rows first; a row starts only while the budget allows
    rows, skipped, measured = [], [], {}
    est = 0.0
    for n in tokens_list:
        for dh in head_dims:
            for b in backends[dh]:
                if time.perf_counter() - t_start + est > budget:
                    skipped.append(f"{b}@Dh{dh}/N{n}")
                    continue
                qkv = [torch.randn(1, HEADS, n, dh, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
                t0 = time.perf_counter()
                ms = bench(lambda x=qkv, b=b: attention(*x, b).sum().backward(), device, reps, warmup=2)
                est = time.perf_counter() - t0  # the last row (the first of a JIT backend includes its compile)
                tf = attention_tflop(1, HEADS, n, dh) / (ms / 1e3)
                rows.append((b, dh, n, ms, tf))
                measured.setdefault((dh, n), {})[b] = tf
    title = f"attention fwd+bwd, (1, {HEADS}, N, Dh) {str(dtype).removeprefix('torch.')}, median of {reps}"
    print_table(title, ["backend", "Dh", "tokens", "ms", "TFLOP/s"], rows)
    if skipped:
        print(f"skipped (section budget {budget:.0f} s): {', '.join(skipped)}")
    for dh in head_dims:
        best, why = pick_auto(device, dh)
        print(f"auto at head dim {dh} on {device_name(device)}: {best} ({why})")
    if args.write_table:
        if not on_gpu:
            print("--write-table: only GPU measurements go into the table; nothing written")
        else:
            for (dh, n), tflops in measured.items():
                if n == TOKENS[0]:
                    write_row(device_name(device), dh, tflops, n, HEADS, "bf16")
                    print(f"table: {device_name(device)} head dim {dh}: {len(tflops)} backends written")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
