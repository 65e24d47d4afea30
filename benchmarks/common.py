"""Shared helpers for the benchmark sections run by `benchmarks/gpu_check.sh`.

Each section is a module (`python -m benchmarks.<name> [--quick]`) that prints its own table;
these helpers keep the tables and timings comparable across sections. Only torch is needed.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch


def env_line(device: torch.device) -> str:
    parts = [f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("triton: not installed")
    if device.type == "cuda":
        parts.append(f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        parts.append("CPU: timings are a smoke test only")
    return " | ".join(parts)


def bench(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() over `reps` runs, each after an L2 flush (CUDA events on GPU).

    The flush (a 256 MB memset, outside the timed region) makes every run read from HBM, as the
    ops do inside a model whose activations do not fit in L2; it also lets the CPU queue the next
    launches while the GPU is busy, so Python launch overhead shows only when it exceeds GPU time.
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize(device)
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n## {title}")
    print("  ".join(c.ljust(w) for c, w in zip(cells[0], widths)))
    print(line)
    for r in cells[1:]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.3f}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)
