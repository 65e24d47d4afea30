"""benchmarks/preprocess_gpu_node.py --quick: the GPU-node benchmark keeps working (tiny shape, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_node_benchmark_runs_end_to_end_at_a_tiny_shape(tmp_path) -> None:
    out = tmp_path / "figures.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.preprocess_gpu_node", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(out.read_text())
    rows = {r["workers"]: r for r in figures["rows"]}
    assert set(rows) == {1, 2}, run.stdout
    for r in rows.values():
        assert r["ceiling"] > 0 and r["clips"] > 0 and r["rejected"] == 0 and 0 <= r["starved_s"] <= r["wall_s"]
    # every clip the pipeline runs encoded went into a shard its writer wrote
    assert figures["samples_in_shards"] == sum(r["clips"] for r in rows.values())
    assert "| decode workers | ceiling clips/s | pipeline clips/s |" in run.stdout and "who waits" in run.stdout
    assert "| pyav (pyav) |" in run.stdout and "| 0 (ok: the codec's rounding allows 4" in run.stdout
