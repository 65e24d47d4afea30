"""The trainer's side of the memory policy: gather the layout (model size, tokens, micro batch, ZeRO
stage, sequence parallel, world size) and the device's memory, ask `dfm_video.models.memory` for the
checkpointing policy, log the estimate. Runs before any process group, so a layout that cannot fit
fails fast with the numbers."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Optional, Sequence

import torch

from dfm_video.config import Config
from dfm_video.models import parameter_counts, resolve_size, stage_patch_sizes, token_grid
from dfm_video.models.memory import Layout, MemoryPlan, plan_memory

log = logging.getLogger(__name__)


def device_memory_bytes(local_rank: int = 0) -> int:
    """Total memory of this rank's GPU, or the host's physical memory without one."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(local_rank).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_layout(cfg: Config, latent_shape: Sequence[int], world_size: int) -> Layout:
    """The planner's view of one rank of this run, for the finest latent (T, H, W) of a dataset."""
    size = resolve_size(cfg.model)
    patch = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1]
    tokens = math.prod(token_grid(latent_shape, patch, cfg.dfm.temporal_mode))
    d = cfg.distributed
    return Layout(
        depth=size.depth,
        hidden_size=size.hidden_size,
        num_params=int(parameter_counts(cfg.model, cfg.dfm)["total"]),
        tokens=tokens,
        micro_batch=d.micro_batch_size,
        zero_stage=d.zero_stage,
        world_size=world_size,
        sequence_parallel=d.sequence_parallel,
    )


def plan_checkpointing(
    cfg: Config, latent_shapes: Sequence[Sequence[int]], world_size: int, device_bytes: Optional[int] = None
) -> MemoryPlan:
    """The plan for the largest dataset of the run (ValueError when `auto` finds none that fits)."""
    device_bytes = device_memory_bytes(int(os.environ.get("LOCAL_RANK", "0"))) if device_bytes is None else device_bytes
    layouts = [training_layout(cfg, shape, world_size) for shape in latent_shapes]
    largest = max(layouts, key=lambda lay: lay.tokens)
    return plan_memory(largest, device_bytes, cfg.model.activation_checkpointing)


def with_policy(cfg: Config, policy: str) -> Config:
    """A copy of `cfg` whose model runs `policy` (the saved config keeps what the user wrote)."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, activation_checkpointing=policy))
