"""One DFM training objective evaluation: draw stages, times, noise and label dropout; call the model.

`model(x_t_levels, t (B, S), active (B, S), y (B,)) -> velocity levels`. Everything random comes
from the one generator passed in, so a step is reproducible from (seed, step, rank) alone.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from dfm_video.dfm.loss import LossOutput, dfm_loss, noisy_levels, sample_noise
from dfm_video.dfm.timesteps import TimestepParams, sample_timesteps

VelocityModel = Callable[[list[Tensor], Tensor, Tensor, Tensor], Sequence[Tensor]]


def drop_labels(y: Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by `null_class` with probability p (classifier-free guidance training)."""
    if p <= 0:
        return y
    gen_device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=gen_device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def dfm_objective(
    model: VelocityModel,
    levels: Sequence[Tensor],
    y: Tensor,
    params: TimestepParams,
    *,
    class_dropout: float,
    null_class: int,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """The spec's loss for one batch of (standardised) pyramid levels, each (B, C, T_s, H_s, W_s)."""
    if len(levels) != params.num_stages:
        raise ValueError(f"batch has {len(levels)} pyramid levels, the DFM config {params.num_stages} stages")
    B = levels[0].shape[0]
    ts = sample_timesteps(B, params, generator=generator, device=levels[0].device, dtype=torch.float32)
    noise = sample_noise(levels, generator)
    noisy = noisy_levels(levels, ts.t, noise)
    y_in = drop_labels(y, class_dropout, null_class, generator)
    pred = model(noisy.x_t, ts.t, ts.active, y_in)
    return dfm_loss(pred, noisy.target, ts.active)
