"""Exponential moving average of the weights, kept in float32, correct under ZeRO-3.

Under ZeRO-3 every rank holds only its partition of each parameter (`p.ds_tensor`, flat and
padded), so the EMA is kept per partition; `full_state_dict` all-gathers the partitions into whole
tensors. Under ZeRO 0-2 every rank holds whole parameters and keeps an identical EMA.

Checkpoints hold the EMA once, as whole tensors by parameter name (`gather_to_rank0`), so any world
size and ZeRO stage can load it: `load_full` cuts each rank's partition out of the whole tensor.
"""

from __future__ import annotations

from typing import Iterator, Mapping

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

    @torch.no_grad()
    def gather_to_rank0(self) -> dict[str, torch.Tensor]:
        """Whole float32 EMA tensors on CPU by name on rank 0, {} elsewhere (collective under ZeRO-3).

        Gathered one parameter at a time to rank 0 only, so no rank ever holds two full copies and
        the other ranks hold none (ZeRO 0-2: every rank has the same whole EMA; rank 0 writes it).
        """
        rank = dist.get_rank() if dist.is_initialized() else 0
        out: dict[str, torch.Tensor] = {}
        for name, p, s in zip(self.names, self.params, self.shadow):
            if _is_partitioned(p):
                parts = [torch.empty_like(s) for _ in range(dist.get_world_size())] if rank == 0 else None
                dist.gather(s, parts, dst=0)
                if rank == 0:
                    out[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu()
            elif rank == 0:
                out[name] = s.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_full(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore from whole tensors by name (any saving world size / stage); ValueError on a mismatch."""
        missing = [n for n in self.names if n not in tensors]
        extra = sorted(set(tensors) - set(self.names))
        if missing or extra:
            raise ValueError(f"EMA checkpoint does not match this model: missing {missing[:5]}, unexpected {extra[:5]}")
        shadow = []
        for name, p, s in zip(self.names, self.params, self.shadow):
            full = tensors[name]
            if _is_partitioned(p):
                if tuple(full.shape) != tuple(p.ds_shape):
                    raise ValueError(
                        f"EMA tensor {name}: shape {tuple(full.shape)} in "
                        f"the checkpoint, {tuple(p.ds_shape)} in the model"
                    )
                n = s.numel()  # this rank's partition, padded at the end of the last rank
                flat = full.flatten().float()
                flat = torch.cat([flat, flat.new_zeros(n * dist.get_world_size() - flat.numel())])
                part = flat[dist.get_rank() * n : (dist.get_rank() + 1) * n]
                shadow.append(part.to(s.device).clone())
            else:
                if full.shape != s.shape:
                    raise ValueError(
                        f"EMA tensor {name}: shape {tuple(full.shape)} in the checkpoint, {tuple(s.shape)} in the model"
                    )
                shadow.append(full.to(device=s.device, dtype=torch.float32).clone())
        self.shadow = shadow

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
