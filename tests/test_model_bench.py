"""benchmarks/bench_model.py runs end to end (tiny model on CPU) and reports a timing row."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from proc_helpers import run_group

ROOT = Path(__file__).resolve().parents[1]


def test_bench_model_quick_runs() -> None:
    proc = run_group(
        [sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--quick", "--device", "cpu"],
        300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # tiny model: one thread, robust to busy shared cores
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("sdpa"))
    assert "eager" in row and "error" not in row
    assert float(row.split()[2]) > 0  # ms/step
