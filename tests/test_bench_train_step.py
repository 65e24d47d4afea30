"""benchmarks/bench_train_step.py --quick runs the trainer's step end to end on CPU and reports every column."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from proc_helpers import run_group

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_step_quick_reports_old_and_new() -> None:
    proc = run_group(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train_step.py"), "--quick", "--zero-stages", "3"],
        400,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    table = proc.stdout.split("training step: old vs new settings")[1].splitlines()
    rows = {}
    for line in table:
        cells = line.split()
        if cells and cells[0] in ("old", "new"):
            key = f"{cells[0]} {cells[1]}" if cells[1].startswith("ZeRO") else cells[0]
            rows[key] = cells[2:] if cells[1].startswith("ZeRO") else cells[1:]
    old, new = rows["old"], rows["new"]
    assert old[0] == "full" and old[1] == "foreach"  # the settings k700 shipped with
    assert new[0] == "none"  # the planner's pick for the tiny model (auto)
    assert float(old[2]) > 0 and float(new[2]) > 0 and float(new[8]) > 0  # ms/step, optimizer ms
    assert float(rows["new ZeRO-3"][2]) > 0 and "error" not in proc.stdout
    profile = proc.stdout.split("profile of one optimizer step")[1]
    for cat in ("attention", "matmuls", "elementwise", "optimizer+EMA", "communication", "data wait"):
        assert cat in profile
    matmul_ms = float(profile.split("matmuls")[1].split()[0])
    assert matmul_ms > 0
