"""A tiny DiT3D overfits one fixed batch with the DFM loss (end-to-end: pyramid, noise, loss)."""

from __future__ import annotations

import pytest
import torch

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.dfm import TimestepParams, decompose, dfm_loss, noisy_levels, sample_noise, sample_timesteps
from dfm_video.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


STEPS = 200


def overfit(dfm_cfg: DFMConfig, patch, shape, steps: int = STEPS) -> list[float]:
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        depth=2, hidden_size=64, num_heads=4, in_channels=4, num_classes=10, patch_size=patch, attention="sdpa"
    )
    model = build_model(model_cfg, dfm_cfg)
    g = torch.Generator().manual_seed(0)
    B = 4
    levels = decompose(torch.randn(B, 4, *shape, generator=g), dfm_cfg.factors, dfm_cfg.temporal_mode)
    ts = sample_timesteps(B, TimestepParams.from_config(dfm_cfg), generator=g)
    active = ts.active.clone()
    active[: B // 2] = True  # make sure both stages are trained in this batch
    t = torch.where(active, ts.t, torch.zeros_like(ts.t))
    t[: B // 2, 1] = 0.5
    noisy = noisy_levels(levels, t, sample_noise(levels, g))
    y = torch.arange(B) % 10
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        out = model(noisy.x_t, t, active, y)
        loss = dfm_loss(out, noisy.target, active).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_dit3d_overfits_one_batch() -> None:
    dfm_cfg = DFMConfig(num_stages=2, factors=[(2, 2, 2)], temporal_mode="causal", stage_probs=[0.5, 0.5])
    losses = overfit(dfm_cfg, (2, 2, 2), (5, 8, 8))
    start, end = losses[0], sum(losses[-10:]) / 10
    print(f"overfit: loss {start:.3e} -> {end:.3e} (mean of the last 10) in {STEPS} steps")
    assert end < start / 10, (start, end)
