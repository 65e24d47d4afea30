"""One DFM training objective evaluation: draw stages, times, noise and label dropout; call the model.

`model(x_t_levels, t (B, S), active (B, S), y (B,)) -> velocity levels`. Everything random comes
from the generator passed in, or from one generator per sample (a list of B): then each sample's
draws depend only on its own generator, so the same samples give the same draws however they are
grouped into micro-batches and ranks (the trainer seeds them by global sample position).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from dfm_video.dfm.loss import LossOutput, dfm_loss, noisy_levels, sample_noise
from dfm_video.dfm.timesteps import StageTimesteps, TimestepParams, sample_timesteps

VelocityModel = Callable[[list[Tensor], Tensor, Tensor, Tensor], Sequence[Tensor]]


def drop_labels(y: Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by `null_class` with probability p (classifier-free guidance training)."""
    if p <= 0:
        return y
    gen_device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=gen_device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


def sample_generators(seed: int, first_sample: int, count: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, global sample position): world-size independent draws."""
    gens = []
    for i in range(count):
        g = torch.Generator(device=device)
        g.manual_seed(seed * 1_000_003 + first_sample + i)
        gens.append(g)
    return gens


def dfm_objective(
    model: VelocityModel,
    levels: Sequence[Tensor],
    y: Tensor,
    params: TimestepParams,
    *,
    class_dropout: float,
    null_class: int,
    generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
) -> LossOutput:
    """The spec's loss for one batch of (standardised) pyramid levels, each (B, C, T_s, H_s, W_s)."""
    if len(levels) != params.num_stages:
        raise ValueError(f"batch has {len(levels)} pyramid levels, the DFM config {params.num_stages} stages")
    B = levels[0].shape[0]
    if isinstance(generator, (list, tuple)):
        ts, noise, y_in = _per_sample_draws(levels, y, params, class_dropout, null_class, generator)
    else:
        ts = sample_timesteps(B, params, generator=generator, device=levels[0].device, dtype=torch.float32)
        noise = sample_noise(levels, generator)
        y_in = drop_labels(y, class_dropout, null_class, generator)
    noisy = noisy_levels(levels, ts.t, noise)
    pred = model(noisy.x_t, ts.t, ts.active, y_in)
    return dfm_loss(pred, noisy.target, ts.active)


def _per_sample_draws(
    levels: Sequence[Tensor],
    y: Tensor,
    params: TimestepParams,
    class_dropout: float,
    null_class: int,
    gens: Sequence[torch.Generator],
) -> tuple[StageTimesteps, list[Tensor], Tensor]:
    """Stage/t, noise and label dropout of sample i from gens[i] only (in that order)."""
    B = levels[0].shape[0]
    if len(gens) != B:
        raise ValueError(f"{len(gens)} generators for a batch of {B}")
    dev = levels[0].device
    per_batch = params.stage_sampling == "per_batch"
    # per_batch: one stage for the whole micro-batch, drawn from sample 0's generator (so that mode's
    # draws do depend on the micro-batch grouping).
    batch_ts = sample_timesteps(B, params, generator=gens[0], device=dev, dtype=torch.float32) if per_batch else None
    ts_parts, noise_parts, y_parts = [], [], []
    for i, g in enumerate(gens):
        if not per_batch:
            ts_parts.append(sample_timesteps(1, params, generator=g, device=dev, dtype=torch.float32))
        noise_parts.append(sample_noise([x[i : i + 1] for x in levels], g))
        y_parts.append(drop_labels(y[i : i + 1], class_dropout, null_class, g))
    ts = batch_ts or StageTimesteps(
        t=torch.cat([p.t for p in ts_parts]),
        active=torch.cat([p.active for p in ts_parts]),
        stage=torch.cat([p.stage for p in ts_parts]),
    )
    noise = [torch.cat([n[k] for n in noise_parts]) for k in range(len(levels))]
    return ts, noise, torch.cat(y_parts)
