"""Exponential moving average of the weights, kept in float32, correct under ZeRO-3.

Under ZeRO-3 every rank holds only its partition of each parameter (`p.ds_tensor`, flat and
padded), so the EMA is kept per partition and each rank saves its own shard; `full_state_dict`
all-gathers the partitions into whole tensors. Under ZeRO 0-2 every rank holds whole parameters
and keeps an identical EMA.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def _is_partitioned(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_tensor")


class EMA:
    """Float32 shadow weights: shadow <- decay * shadow + (1 - decay) * param after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.names.append(name)
                self.params.append(p)
        self.partitioned = any(_is_partitioned(p) for p in self.params)
        self.shadow = [s.detach().float().clone() for s in self._sources()]

    def _sources(self) -> Iterator[torch.Tensor]:
        for p in self.params:
            yield p.ds_tensor if _is_partitioned(p) else p.data

    @torch.no_grad()
    def update(self) -> None:
        srcs = [s.float() for s in self._sources()]
        torch._foreach_lerp_(self.shadow, srcs, 1.0 - self.decay)

    def state_dict(self) -> dict:
        """This rank's shadow (a partition under ZeRO-3), for checkpoints."""
        return {"decay": self.decay, "partitioned": self.partitioned, "names": self.names, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names or state["partitioned"] != self.partitioned:
            raise ValueError("EMA checkpoint does not match this model (parameter names or ZeRO-3 partitioning differ)")
        if len(state["shadow"]) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(state["shadow"], self.shadow)):
            raise ValueError(
                "EMA checkpoint shards have other shapes than this run's: under ZeRO-3 resume with the same world size"
            )
        self.shadow = [t.to(s.device).float() for t, s in zip(state["shadow"], self.shadow)]

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole float32 EMA tensors by parameter name (collective under ZeRO-3: call on every rank)."""
        out = {}
        for name, p, s in zip(self.names, self.params, self.shadow):
            if _is_partitioned(p):
                parts = [torch.empty_like(s) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, s)
                out[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).clone()
            else:
                out[name] = s.clone()
        return out
