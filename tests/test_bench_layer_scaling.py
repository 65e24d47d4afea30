"""benchmarks/bench_layer_scaling.py --quick runs end to end on CPU (a tiny DiTBlock) and reports
every part at every length; its analytic FLOPs agree with dfm_video.models.flops."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from proc_helpers import run_group

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_layer_scaling import fwd_bwd_flops  # noqa: E402
from dfm_video.config import load_config  # noqa: E402
from dfm_video.models import model_flops  # noqa: E402


def test_quick_mode_reports_every_part_and_length() -> None:
    proc = run_group(
        [sys.executable, str(ROOT / "benchmarks" / "bench_layer_scaling.py"), "--quick", "--reps", "1"],
        300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout.split("## DiT3D layer")[1].splitlines()[3:]
    rows = [line.split() for line in table if line.strip() and not line.startswith("total")]
    parts = {(r[0], int(r[-5])) for r in rows}
    for L in (128, 256, 512):
        for part in ("block", "attn", "mlp", "core/h8", "core/h4", "core/h2", "core/h1"):
            assert (part, L) in parts, (part, L, proc.stdout[-2000:])
    assert all(float(r[-4]) > 0 for r in rows)  # ms


@pytest.mark.parametrize("grid", [(13, 32, 32), (31, 32, 32)])
def test_block_flops_match_the_model_count(grid) -> None:
    # one XL block x 28 = the trunk of model_flops (which adds embedders and heads: < 1%)
    cfg = load_config("k700.yaml")
    L = grid[0] * grid[1] * grid[2]
    per_block = fwd_bwd_flops("block", L, 1152, 16, 4.0) / 3
    total = model_flops(cfg.model, cfg.dfm, (grid[0], 64, 64))
    assert per_block * 28 == pytest.approx(total, rel=0.01)
