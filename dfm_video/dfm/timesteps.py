"""Training-time stage and timestep sampling (DFM_METHOD.md section 4).

Convention: t = 0 is pure noise, t = 1 is data.

    Q ~ Categorical(p_q)                  the stage being trained (per sample by default)
    t_Q       = sigmoid(N(current_loc, current_scale))
    t_s, s<Q  = sigmoid(N(earlier_loc, earlier_scale)), drawn independently per stage
    t_s, s>Q  = 0, inactive (input masked, no loss)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dfm_video.config.schema import DFMConfig

_DEFAULTS = DFMConfig()  # the defaults are the config's, documented there


@dataclass(frozen=True)
class TimestepParams:
    """The knobs of `sample_timesteps`; `from_config` reads them from `DFMConfig`."""

    stage_probs: tuple[float, ...] = tuple(_DEFAULTS.stage_probs)
    current_loc: float = _DEFAULTS.current_loc
    current_scale: float = _DEFAULTS.current_scale
    earlier_loc: float = _DEFAULTS.earlier_loc
    earlier_scale: float = _DEFAULTS.earlier_scale
    stage_sampling: Literal["per_sample", "per_batch"] = _DEFAULTS.stage_sampling

    @classmethod
    def from_config(cls, dfm_cfg: DFMConfig) -> "TimestepParams":
        return cls(
            stage_probs=tuple(dfm_cfg.stage_probs),
            current_loc=dfm_cfg.current_loc,
            current_scale=dfm_cfg.current_scale,
            earlier_loc=dfm_cfg.earlier_loc,
            earlier_scale=dfm_cfg.earlier_scale,
            stage_sampling=dfm_cfg.stage_sampling,
        )

    @property
    def num_stages(self) -> int:
        return len(self.stage_probs)


@dataclass(frozen=True)
class StageTimesteps:
    """t: (B, S) per-stage time; active: (B, S) bool (s <= Q); stage: (B,) Q as a 0-based index."""

    t: Tensor
    active: Tensor
    stage: Tensor


def sample_timesteps(
    batch_size: int,
    params: TimestepParams,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> StageTimesteps:
    """Draw the trained stage and every stage's t for a batch (see module docstring)."""
    probs = torch.tensor(params.stage_probs, dtype=torch.float64)
    if probs.dim() != 1 or probs.numel() < 1 or bool((probs < 0).any()) or abs(float(probs.sum()) - 1) > 1e-6:
        raise ValueError(f"stage_probs must be non-negative and sum to 1, got {list(params.stage_probs)}")
    S = probs.numel()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # Draw on the generator's device (reproducible for a seed), then move.
    n_q = batch_size if params.stage_sampling == "per_sample" else 1
    stage = torch.multinomial(probs.to(gen_device), n_q, replacement=True, generator=generator)
    stage = stage.expand(batch_size) if n_q == 1 else stage
    z = torch.randn(batch_size, S, generator=generator, device=gen_device, dtype=torch.float64)
    idx = torch.arange(S, device=gen_device)[None, :]
    q = stage[:, None]
    current = torch.sigmoid(params.current_loc + params.current_scale * z)
    earlier = torch.sigmoid(params.earlier_loc + params.earlier_scale * z)
    t = torch.where(idx < q, earlier, torch.where(idx == q, current, torch.zeros_like(z)))
    active = idx <= q
    return StageTimesteps(t=t.to(device=device, dtype=dtype), active=active.to(device), stage=stage.to(device))


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, ...) matching `like`'s rank and dtype, for broadcasting over a level."""
    return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
