"""Training metrics by value: per-stage loss weighting, stage fractions, data-wait %, the MFU formula,
and the W&B payload (the same keys and values as metrics.jsonl)."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch

from dfm_video.config import load_config
from dfm_video.dfm import dfm_loss
from dfm_video.models.flops import model_flops, training_flops
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.train.metrics import MetricAccumulator
from dfm_video.train.monitor import RunMonitor


def test_dfm_loss_weights_each_stage_by_its_active_samples():
    # B = 3, S = 2; sample 0 trains stage 1 only, samples 1 and 2 both stages. Errors are constants.
    err = torch.tensor([[1.0, 9.0], [2.0, 3.0], [4.0, 5.0]])  # (B, S) per-element error
    pred = [err[:, s].view(3, 1, 1, 1, 1).expand(3, 2, 1, 2, 2).clone() for s in range(2)]
    target = [torch.zeros(3, 2, 1, 2, 2) for _ in range(2)]
    active = torch.tensor([[True, False], [True, True], [True, True]])
    out = dfm_loss(pred, target, active)
    mse = err.pow(2)
    # sum of the active stages' mse per sample, then the batch mean; stage 2's error of sample 0 is ignored
    assert out.loss.item() == pytest.approx((1 + (4 + 9) + (16 + 25)) / 3)
    torch.testing.assert_close(out.per_stage, torch.tensor([mse[:, 0].mean(), (9 + 25) / 2]))
    torch.testing.assert_close(out.active_count, torch.tensor([3.0, 2.0]))


def test_accumulator_weights_stage_losses_by_sample_count_and_reports_fractions_and_data_wait():
    acc = MetricAccumulator(2, torch.device("cpu"))
    # micro-step 1: 4 samples, all train stage 1, one of them stage 2 as well; micro-step 2: 2 samples, stage 1 only
    acc.add(torch.tensor(1.0), torch.tensor([2.0, 4.0]), torch.tensor([4.0, 1.0]), samples=4, data_wait=0.5)
    acc.add(torch.tensor(3.0), torch.tensor([5.0, 0.0]), torch.tensor([2.0, 0.0]), samples=2, data_wait=0.5)
    acc.started = time.perf_counter() - 4.0  # a 4 s window, 1 s of it waiting for data
    m = acc.reduce()
    assert m["loss/total"] == pytest.approx(2.0)  # mean over micro-steps
    assert m["loss/stage1"] == pytest.approx((2.0 * 4 + 5.0 * 2) / 6)  # weighted by samples: 3.0, not 3.5
    assert m["loss/stage2"] == pytest.approx(4.0)  # the micro-step without stage-2 samples does not dilute it
    assert m["train/stage1_fraction"] == pytest.approx(1.0)
    assert m["train/stage2_fraction"] == pytest.approx(1 / 6)
    assert m["time/data_wait(%)"] == pytest.approx(25.0, rel=0.02)
    assert m["perf/samples_per_s"] == pytest.approx(6 / 4.0, rel=0.02)
    acc.reset()
    acc.add(torch.tensor(1.0), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), samples=2, data_wait=0.0)
    m = acc.reduce()
    assert "loss/stage2" not in m and m["train/stage2_fraction"] == 0.0  # no stage-2 samples: no stage-2 loss


class _RecordingRun:
    """Stands in for wandb's Run object (wandb is not installable here): records what `log` receives."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, payload: dict, step: int) -> None:
        self.logged.append((step, dict(payload)))

    def finish(self) -> None:
        pass


def _state(grad_norm: float, lr: float) -> SimpleNamespace:
    return SimpleNamespace(
        engine=SimpleNamespace(get_global_grad_norm=lambda: grad_norm),
        scheduler=SimpleNamespace(get_last_lr=lambda: [lr]),
    )


def test_mfu_formula_and_the_wandb_payload_equals_metrics_jsonl(tmp_path):
    cfg = load_config(
        None,
        [
            "model.depth=2",
            "model.hidden_size=64",
            "model.num_heads=2",
            "train.peak_tflops=0.002",
            "train.measured_peak_tflops=0.001",
            "train.tensorboard=false",
            "train.progress=false",
        ],
    )
    latent = (cfg.model.in_channels, 5, 16, 16)
    world = 2
    mon = RunMonitor(cfg, 0, world, torch.device("cpu"), tmp_path, {"labels": []}, latent[1:], start_step=0)
    run = mon.wandb.run = _RecordingRun()
    S = cfg.dfm.num_stages
    for _ in range(3):
        mon.metrics.add(torch.tensor(0.5), torch.ones(S), torch.full((S,), 4.0), samples=4, data_wait=0.0)
    mon.metrics.started = time.perf_counter() - 2.0
    m = mon.log(7, _state(1.25, 3e-4), 0)
    mon.close(plot=False)

    # MFU: achieved FLOP/s per device = samples/s (all ranks) x training FLOPs per sample / world size
    flops = training_flops(cfg.model, cfg.dfm, latent[1:])
    assert flops == 3 * model_flops(cfg.model, cfg.dfm, latent[1:])
    sps = m["perf/samples_per_s"]
    assert sps == pytest.approx(12 / 2.0, rel=0.02)
    assert m["perf/mfu(%)"] == pytest.approx(100 * sps * flops / world / 0.002e12, rel=1e-12)
    assert m["perf/mfu_vs_measured_peak(%)"] == pytest.approx(2 * m["perf/mfu(%)"], rel=1e-12)
    finest = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1]
    tokens = math.prod(token_grid(latent[1:], finest, cfg.dfm.temporal_mode))
    assert m["perf/tokens_per_s"] == pytest.approx(sps * tokens, rel=1e-12)
    assert m["grad_norm"] == 1.25 and m["lr"] == 3e-4

    # W&B gets exactly the metrics.jsonl record: same keys, same values, same step
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0].pop("step") == 7
    ((step, payload),) = run.logged
    assert step == 7 and sorted(payload) == sorted(rows[0])
    assert all(payload[k] == pytest.approx(rows[0][k], rel=1e-12, nan_ok=True) for k in payload)
