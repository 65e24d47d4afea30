"""Autograd collectives of DeepSpeed-Ulysses sequence parallelism, around our attention backends.

Why our own all-to-all and not `deepspeed.sequence.layer.DistributedAttention`: that layer takes
(s, b, h, d) tensors and three separate all-to-alls; our attention works on (B, Hd, N, Dh) and
dispatches to sdpa / flash / xformers itself. One fused all-to-all for q, k and v together (one
collective instead of three, same bytes) around `dfm_video.models.attention.attention` keeps every
backend working unchanged, and keeps deepspeed out of everything but dfm_video/train (the import
boundary) and off the GPU image.

Layout: a rank holds tokens [r*n, (r+1)*n) (n = N_tokens / P) with all Hd heads; after the
all-to-all it holds all N tokens of heads [r*Hd/P, (r+1)*Hd/P).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from dfm_video.models.attention import attention


class _AllToAll(torch.autograd.Function):
    """Equal-split all_to_all_single along dim 0 (P chunks). Its adjoint is the same exchange."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        x = x.contiguous()  # before empty_like: it copies a permuted view's strides
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def all_to_all(x: Tensor, group: Any) -> Tensor:
    """Chunk j of dim 0 goes to rank j; chunk j of the result came from rank j (differentiable)."""
    return _AllToAll.apply(x, group)


class _GatherTokens(torch.autograd.Function):
    """All-gather token shards (dim 1) whose consumer is replicated on every rank of the group.

    Every rank then computes the same loss from the same gathered tensor, so each rank's incoming
    gradient is already the whole gradient: backward keeps this rank's slice and communicates
    nothing (an all-gather's usual reduce-scatter would count it P times).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        P, r = dist.get_world_size(group), dist.get_rank(group)
        ctx.slice = (r * x.shape[1], x.shape[1])
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(P)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        start, n = ctx.slice
        return grad.narrow(1, start, n).contiguous(), None


def gather_tokens(x: Tensor, group: Any) -> Tensor:
    """(B, n, F) shards -> (B, P*n, F) on every rank, for replicated consumers (see _GatherTokens)."""
    return _GatherTokens.apply(x, group)


class UlyssesAttention:
    """Drop-in for `attention(q, k, v, backend)` on token shards: all-to-all, attend, all-to-all back.

    q, k, v: (B, Hd, n, Dh) local tokens, all heads -> out (B, Hd, n, Dh). The inner attention sees
    (B, Hd/P, P*n, Dh): whole sequences of a slice of the heads, with any backend.
    """

    def __init__(self, group: Any, inner: Callable[[Tensor, Tensor, Tensor, str], Tensor] = attention) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.inner = inner

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
        P = self.size
        B, Hd, n, Dh = q.shape
        if Hd % P:
            raise ValueError(f"sequence parallel size {P} must divide the attention heads ({Hd})")
        h = Hd // P
        # (3, B, Hd, n, Dh) -> (P, 3, B, h, n, Dh): chunk j = head group j, sent to rank j
        qkv = torch.stack((q, k, v)).view(3, B, P, h, n, Dh).permute(2, 0, 1, 3, 4, 5)
        recv = all_to_all(qkv, self.group)  # chunk j = my head group of rank j's tokens
        q2, k2, v2 = recv.permute(1, 2, 3, 0, 4, 5).reshape(3, B, h, P * n, Dh).unbind(0)
        out = self.inner(q2, k2, v2, backend)  # (B, h, N, Dh)
        # (B, h, P, n, Dh) -> (P, B, h, n, Dh): chunk j = token shard j, sent back to rank j
        send = out.reshape(B, h, P, n, Dh).permute(2, 0, 1, 3, 4)
        back = all_to_all(send, self.group)  # chunk j = head group j of my tokens
        return back.permute(1, 0, 2, 3, 4).reshape(B, Hd, n, Dh)
