"""Named DiT3D sizes (DiT's depth / width / heads): plain data. Parameter counts: models/flops.py."""

from __future__ import annotations

from dataclasses import dataclass

from dfm_video.config.schema import ModelConfig


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
