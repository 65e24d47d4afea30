"""The attention benchmark's CPU smoke mode: every CPU backend checked against float64 and timed."""

from __future__ import annotations

import pytest

from benchmarks import bench_attention


def test_quick_mode_checks_and_times_every_cpu_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_attention.main(["--quick", "--device", "cpu", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    table = out.split("## attention fwd+bwd")[1]
    for backend in ("sdpa", "sdpa_flash", "sdpa_math"):
        assert f"{backend} " in out.split("## attention vs float64")[1].split("##")[0]
        assert f"{backend} " in table or "skipped" in table
    assert "auto at head dim 72 on cpu: sdpa" in out
    assert "FAIL" not in out


def test_attention_flops_count_forward_and_backward() -> None:
    # 4 B H N^2 Dh forward (QK^T and AV), x3 with the backward
    assert bench_attention.attention_tflop(1, 16, 13312, 72) == pytest.approx(3 * 4 * 16 * 13312**2 * 72 / 1e12)
