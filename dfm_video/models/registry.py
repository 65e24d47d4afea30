"""Named DiT3D sizes (DiT's depth / width / heads) and parameter accounting."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # runtime needs only the attributes (the GPU image may lack the config loader's yaml)
    from dfm_video.config.schema import DFMConfig, ModelConfig


@dataclass(frozen=True)
class ModelSize:
    """Transformer trunk size: number of blocks, width D, attention heads."""

    depth: int
    hidden_size: int
    num_heads: int


SIZES: dict[str, ModelSize] = {
    "DiT3D-S": ModelSize(12, 384, 6),
    "DiT3D-B": ModelSize(12, 768, 12),
    "DiT3D-L": ModelSize(24, 1024, 16),
    "DiT3D-XL": ModelSize(28, 1152, 16),
}


def resolve_size(model_cfg: ModelConfig) -> ModelSize:
    """The registry size of `model_cfg.name`, with `depth/hidden_size/num_heads` overrides applied."""
    if model_cfg.name not in SIZES:
        raise ValueError(f"model.name: unknown size {model_cfg.name!r}, expected one of {sorted(SIZES)}")
    base = SIZES[model_cfg.name]
    size = ModelSize(
        depth=model_cfg.depth if model_cfg.depth is not None else base.depth,
        hidden_size=model_cfg.hidden_size if model_cfg.hidden_size is not None else base.hidden_size,
        num_heads=model_cfg.num_heads if model_cfg.num_heads is not None else base.num_heads,
    )
    if size.depth < 1 or size.num_heads < 1 or size.hidden_size % size.num_heads:
        raise ValueError(
            f"model: hidden_size {size.hidden_size} must be divisible by num_heads {size.num_heads} "
            f"and depth ({size.depth}) >= 1"
        )
    return size


def single_stage_config(dfm_cfg: DFMConfig) -> DFMConfig:
    """The plain flow-matching (S = 1) counterpart of a DFM config."""
    return dataclasses.replace(dfm_cfg, num_stages=1, factors=[], stage_probs=[1.0])


def _count(model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> int:
    from dfm_video.models.dit import DiT3D  # late import: dit imports this module

    with torch.device("meta"):  # no memory, no init cost: XL builds instantly
        model = DiT3D(model_cfg, dfm_cfg)
    return sum(p.numel() for p in model.parameters())


def parameter_counts(model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> dict[str, float]:
    """Total parameters and DFM's extra over a single-stage model of the same size.

    extra = parameters a plain flow-matching DiT3D (same size, base patch) would not have: the
    coarser stages' patch embedders, timestep embedders and heads, plus the stage embedding.
    Returns {"total", "single_stage", "extra", "extra_pct"}.
    """
    total = _count(model_cfg, dfm_cfg)
    single = _count(model_cfg, single_stage_config(dfm_cfg))
    extra = total - single
    return {"total": total, "single_stage": single, "extra": extra, "extra_pct": 100.0 * extra / single}
