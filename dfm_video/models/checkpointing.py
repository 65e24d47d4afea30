"""Activation checkpointing of the DiT blocks: apply a policy the caller chose (`none`, `selective`,
`full`); choosing one from the memory is `dfm_video.models.memory`'s job, done before the model runs.

`selective` is op-level selective checkpointing (torch.utils.checkpoint with
`create_selective_checkpoint_contexts`, as torchtitan does): the outputs of the matmuls and of the
attention kernel are saved in the forward pass, so the backward's recomputation of the block only
reruns the cheap elementwise ops (norms, modulation, RoPE, GELU, residual gates) and reads the
saved outputs instead of redoing the FLOPs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

aten = torch.ops.aten


def _attention_ops() -> set[Any]:
    # Whichever SDPA kernel runs must be saved, or selective recomputes attention (66% of the FLOPs).
    names = (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


SAVE_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default} | _attention_ops()


def _policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def run_block(block: Callable[..., torch.Tensor], policy: str, *args: Any) -> torch.Tensor:
    """`block(*args)` under `policy` (`none`, `selective` or `full`); ValueError for anything else."""
    if policy == "none":
        return block(*args)
    if policy == "full":
        return checkpoint(block, *args, use_reentrant=False)
    if policy == "selective":
        context_fn = functools.partial(create_selective_checkpoint_contexts, _policy)
        return checkpoint(block, *args, use_reentrant=False, context_fn=context_fn)
    raise ValueError(
        f"model.activation_checkpointing={policy!r} reached the model: expected none, selective or full "
        "(`auto` is resolved by the trainer's memory planner, dfm_video.models.memory, before the model is built)"
    )
