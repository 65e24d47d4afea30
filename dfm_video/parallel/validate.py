"""Sequence-parallel checks that need no process group (the trainer runs them before init).

Each failure is a ValueError naming the config key and the values involved.
"""

from __future__ import annotations

import math
from typing import Sequence

from dfm_video.config.schema import Config
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.models.registry import resolve_size


def check_sequence_parallel(cfg: Config, world_size: int, latent_shape: Sequence[int] | None = None) -> int:
    """Validate `distributed.sequence_parallel` against the model, the world and the token grid.

    `latent_shape`: the finest level's (T, H, W) (from the shards); None skips the token check
    (sampling checks it when the grid is known). Returns N.
    """
    n = cfg.distributed.sequence_parallel
    key = "distributed.sequence_parallel"
    if n < 1:
        raise ValueError(f"{key}={n}: expected >= 1")
    if n == 1:
        return 1
    heads = resolve_size(cfg.model).num_heads
    if heads % n:
        raise ValueError(
            f"{key}={n} must divide the attention heads: model {cfg.model.name!r} has {heads} heads "
            f"(Ulysses gives every rank of a group heads/N whole heads)"
        )
    if world_size % n:
        raise ValueError(f"{key}={n} must divide the world size {world_size} (ranks form groups of {n})")
    if cfg.model.compile is True:
        raise ValueError(
            f"{key}={n} with model.compile=true is not supported (the "
            "all-to-all is not traced); set model.compile=false"
        )
    if latent_shape is not None:
        patch = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1]
        grid = token_grid(latent_shape, patch, cfg.dfm.temporal_mode)
        check_tokens(
            math.prod(grid), n, f"latents {tuple(latent_shape)} with patch {patch} give the token grid {grid} ="
        )
    return n


def check_tokens(tokens: int, n: int, what: str = "") -> None:
    """ValueError unless `tokens` splits into n equal shards (no padding: every shard is exact)."""
    if tokens % n:
        raise ValueError(
            f"distributed.sequence_parallel={n} must divide the tokens per sample: {what} {tokens} tokens "
            f"({tokens} % {n} = {tokens % n}); choose N dividing it or change the clip length/resolution"
        )
