"""benchmarks.convergence's summary: steps to reach FM's final score (interpolated), ratio, spread."""

import pytest

from benchmarks.convergence import mean_std, seed_summary, steps_to_reach


def _rows(method, pts):
    return [{"method": method, "step": s, "fvd": v} for s, v in pts]


def test_steps_to_reach_interpolates_between_evaluations_and_says_never():
    rows = _rows("dfm", [(100, 10.0), (200, 6.0), (300, 4.0)])
    assert steps_to_reach(rows, "fvd", 10.0) == 100.0
    assert steps_to_reach(rows, "fvd", 5.0) == pytest.approx(250.0)
    assert steps_to_reach(rows, "fvd", 3.0) is None


def test_seed_summary_ratio_and_mean_std():
    rows = _rows("dfm", [(100, 10.0), (200, 6.0), (300, 4.0)]) + _rows("fm", [(100, 12.0), (200, 8.0), (300, 5.0)])
    s = seed_summary(rows, "fvd")
    assert s["fm_final"] == 5.0 and s["dfm_steps"] == pytest.approx(250.0) and s["fm_steps"] == 300.0
    assert s["ratio"] == pytest.approx(250.0 / 300.0)
    slow = _rows("dfm", [(100, 10.0), (300, 9.0)]) + _rows("fm", [(100, 12.0), (300, 5.0)])
    assert seed_summary(slow, "fvd")["ratio"] is None
    mu, sd = mean_std([0.5, 0.7, 0.6])
    assert mu == pytest.approx(0.6) and sd == pytest.approx(0.1)
