"""Apply sequence parallelism to a DiT3D from outside, with hooks (the model code is unchanged).

With a group of P ranks sharing one batch, rank r of the group:
- patch embedders: a forward pre-hook keeps tokens [r*n, (r+1)*n) of each stage's patchified
  level before the Linear, so each rank embeds 1/P of the tokens (the stages share one token grid,
  so one split covers every stage);
- attention: a pre-hook slices the RoPE tables to the same tokens (each token keeps its GLOBAL
  (t, h, w) position), and the core attention becomes the Ulysses all-to-all around our backends;
- per-stage heads: a forward hook all-gathers their token outputs, so unpatchify, the DFM loss and
  the sampler see the whole levels, identical on every rank of the group. Every rank then computes
  the unsplit model's loss; the gather's backward keeps each rank's slice, so a parameter's
  gradient on rank r is its tokens' share, and DeepSpeed's sequence-data-parallel reduction (sum
  over the group, mean over groups; see dfm_video/parallel/groups.py) gives the unsplit gradient.
Everything else (conditioning, embedders of t/y/stage) is computed whole on every rank (B x D).
`state_dict` is unchanged: checkpoints move freely between N = 1 and N > 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
from torch import Tensor, nn

from dfm_video.models.attention import attention
from dfm_video.models.dit import DiT3D
from dfm_video.parallel.ulysses import UlyssesAttention, gather_tokens
from dfm_video.parallel.validate import check_tokens


@dataclass
class SequenceParallelHandle:
    """What `apply_sequence_parallel` installed; `remove()` restores the plain model."""

    model: DiT3D
    hooks: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        for block in self.model.blocks:
            block.attn.core_attention = attention


def apply_sequence_parallel(model: DiT3D, group: Any) -> SequenceParallelHandle:
    """Hook `model` so this rank processes its 1/P of the tokens of `group` (P = group size)."""
    P, r = dist.get_world_size(group), dist.get_rank(group)
    if model.num_heads % P:
        raise ValueError(f"distributed.sequence_parallel={P} must divide the attention heads ({model.num_heads})")
    handle = SequenceParallelHandle(model)

    def shard_tokens(module: nn.Module, args: tuple) -> tuple:
        (tokens,) = args  # (B, N, C*pt*ph*pw), every stage the same N
        N = tokens.shape[1]
        check_tokens(N, P, "the token grid has")
        n = N // P
        return (tokens[:, r * n : (r + 1) * n],)

    def shard_rope(module: nn.Module, args: tuple) -> tuple:
        x, cos, sin, *rest = args  # x: this rank's n tokens; cos/sin: (N, Dh/2) of the whole grid
        n = x.shape[1]
        return (x, cos[r * n : (r + 1) * n], sin[r * n : (r + 1) * n], *rest)

    def gather_head(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return gather_tokens(out, group)

    for embed in model.patch_embed:
        handle.hooks.append(embed.register_forward_pre_hook(shard_tokens))
    ulysses = UlyssesAttention(group)
    for block in model.blocks:
        handle.hooks.append(block.attn.register_forward_pre_hook(shard_rope))
        block.attn.core_attention = ulysses
    for head in model.final_layers:
        handle.hooks.append(head.register_forward_hook(gather_head))
    return handle
