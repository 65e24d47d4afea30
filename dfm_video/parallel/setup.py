"""The trainer's two calls into sequence parallelism (kept here so trainer.py only gains hooks).

`validate_parallel(cfg, latent_shape)` runs before any process group exists (world size from the
launcher's WORLD_SIZE); `setup_parallel(cfg, model)` builds the groups after init and hooks the
model. The result's `dp_rank` / `dp_size` are what the data loader, the per-micro-batch seeds and
the batch arithmetic use: every rank of a sequence group reads the same batch and draws the same
noise (with N = 1 they are the global rank and world size, so nothing changes).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from dfm_video import console
from dfm_video.config.schema import Config
from dfm_video.models.dit import DiT3D
from dfm_video.parallel.apply import apply_sequence_parallel
from dfm_video.parallel.groups import SequenceParallelGroups, build_sequence_parallel_groups
from dfm_video.parallel.validate import check_sequence_parallel


def validate_parallel(cfg: Config, latent_shape: Sequence[int]) -> int:
    """Check distributed.sequence_parallel against heads, world size and tokens; returns N."""
    return check_sequence_parallel(cfg, int(os.environ.get("WORLD_SIZE", "1")), latent_shape)


def setup_parallel(cfg: Config, model: DiT3D) -> SequenceParallelGroups:
    """Build the groups (collective) and, for N > 1, hook `model` (before deepspeed.initialize)."""
    groups = build_sequence_parallel_groups(cfg.distributed.sequence_parallel)
    if groups.size > 1:
        apply_sequence_parallel(model, groups.group)
        if groups.get_sequence_data_parallel_rank() == 0:
            console.report(
                f"sequence parallel: {groups.size} ranks per batch, {groups.dp_size} data-parallel group(s), "
                f"{model.num_heads // groups.size} of {model.num_heads} heads per rank in attention"
            )
    return groups


def sequence_parallel_ds_config(ds_config: dict[str, Any], n: int) -> dict[str, Any]:
    """The DeepSpeed JSON adjusted for N > 1 (a copy; N = 1 returns it unchanged).

    ZeRO-3 in DeepSpeed 0.19.8 has two gradient paths: the default reduce-scatter one averages over
    all ranks and ignores the sequence-parallel size (gradients come out N times too small: measured,
    grad norm halved at N = 2), while the contiguous all-reduce path divides by world / N like
    ZeRO-1/2. `reduce_scatter: false` selects the latter.
    """
    if n == 1:
        return ds_config
    zero = dict(ds_config.get("zero_optimization", {}))
    if zero.get("stage") == 3:
        zero["reduce_scatter"] = False
    return {**ds_config, "zero_optimization": zero}
