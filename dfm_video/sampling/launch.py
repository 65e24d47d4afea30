"""Which process am I: RANK / WORLD_SIZE / LOCAL_RANK as torchrun and the DeepSpeed launcher set
them (or a plain process: rank 0 of 1), and the few collectives sampling and evaluation need.

Work itself needs no communication; the process group (gloo, CPU tensors, also on GPU nodes)
only agrees on what is left to do at the start and counts what was done at the end. Nothing here
starts before the caller has validated its arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from dfm_video import launch_env

#: Ranks wait for each other at most this long in a collective: the slowest rank's remaining
#: work (about one batch after a balanced start, but a whole evaluation set for feature gathers).
TIMEOUT = timedelta(hours=12)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_env(cls, local_rank_arg: Optional[int] = None) -> "Launch":
        """Read the launcher's variables (srun's too); a plain `python -m` run is rank 0 of 1."""
        launch_env.from_slurm()
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local = _env_int("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0)
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} / WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
        if world > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise ValueError(
                f"WORLD_SIZE={world} but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun or deepspeed"
            )
        return cls(rank, world, local)

    def device(self, requested: Optional[str]) -> torch.device:
        """cuda:LOCAL_RANK when CUDA is asked for (or available and nothing is asked), else the request."""
        if requested in (None, "cuda") and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        if requested == "cuda":
            raise ValueError("--device cuda but CUDA is not available")
        return torch.device(requested or "cpu")

    def start(self) -> None:
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world, timeout=TIMEOUT)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (just [obj] in a single process)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        out: Optional[list[Any]] = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def sum(self, values: list[int]) -> list[int]:
        """Element-wise sum over ranks; also the final barrier."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t)
        return [int(v) for v in t]

    def stop(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
