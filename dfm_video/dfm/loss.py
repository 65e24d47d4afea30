"""Noisy levels, velocity targets and the DFM loss (DFM_METHOD.md section 4).

Convention: t = 0 is pure noise, t = 1 is data.
    X_t,s = t_s * X_s + (1 - t_s) * eps_s        eps_s ~ N(0, I) at stage s's own shape
    v_s   = X_s - eps_s
    loss  = mean_b  sum_{s <= Q_b}  mean_{elements of stage s} (G_s - v_s)^2
With S = 1 every sample is active on its only stage and this is plain flow matching.
Inactive stages keep t = 0 (pure noise); the model multiplies their input by 0 before patchify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dfm_video.dfm.timesteps import expand_time


@dataclass(frozen=True)
class NoisyLevels:
    """Per stage: the noisy input x_t (B, C, T_s, H_s, W_s) and the velocity target, same shape."""

    x_t: list[Tensor]
    target: list[Tensor]


@dataclass(frozen=True)
class LossOutput:
    """loss: scalar; per_stage: (S,) mean loss over the samples where the stage is active
    (0 where none is); active_count: (S,) how many samples trained each stage. All stay on device."""

    loss: Tensor
    per_stage: Tensor
    active_count: Tensor


def sample_noise(levels: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
    """Independent standard Gaussian noise for every level, at that level's shape."""
    # Draw on the generator's device so a seed gives the same noise wherever the levels live.
    device = generator.device if generator is not None else None
    return [torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device) for x in levels]


def noisy_levels(levels: Sequence[Tensor], t: Tensor, noise: Sequence[Tensor]) -> NoisyLevels:
    """Interpolate data and noise per stage at t (B, S); targets are v_s = X_s - eps_s."""
    if len(levels) != t.shape[1] or len(noise) != len(levels):
        raise ValueError(f"got {len(levels)} levels, {len(noise)} noise tensors and t for {t.shape[1]} stages")
    x_t, target = [], []
    for s, (x1, x0) in enumerate(zip(levels, noise)):
        if x0.shape != x1.shape:
            raise ValueError(f"noise of stage {s + 1} has shape {tuple(x0.shape)}, the level {tuple(x1.shape)}")
        ts = expand_time(t[:, s], x1)
        x_t.append(ts * x1 + (1 - ts) * x0)
        target.append(x1 - x0)
    return NoisyLevels(x_t=x_t, target=target)


def dfm_loss(pred: Sequence[Tensor], target: Sequence[Tensor], active: Tensor) -> LossOutput:
    """Per-stage mean squared error, summed over each sample's active stages, averaged over the batch.

    pred/target: S tensors (B, C, T_s, H_s, W_s); active: (B, S) bool. Computed in float32 at least.
    """
    if len(pred) != len(target) or len(pred) != active.shape[1]:
        raise ValueError(f"got {len(pred)} predictions, {len(target)} targets and {active.shape[1]} stages")
    per_sample = []  # (B,) mse of each stage
    for s, (g, v) in enumerate(zip(pred, target)):
        if g.shape != v.shape:
            raise ValueError(f"prediction of stage {s + 1} has shape {tuple(g.shape)}, target {tuple(v.shape)}")
        diff = g.float() - v.float() if g.dtype in (torch.float16, torch.bfloat16) else g - v
        per_sample.append(diff.pow(2).flatten(1).mean(dim=1))
    mse = torch.stack(per_sample, dim=1)  # (B, S)
    mask = active.to(mse.dtype)
    loss = (mse * mask).sum(dim=1).mean()
    count = mask.sum(dim=0)
    per_stage = (mse * mask).sum(dim=0) / count.clamp_min(1)
    return LossOutput(loss=loss, per_stage=per_stage.detach(), active_count=count.detach())
