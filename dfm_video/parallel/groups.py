"""Process groups of sequence parallelism and the `mpu` object DeepSpeed reads them from.

Ranks [g*N, (g+1)*N) form sequence-parallel group g (contiguous, so a group sits on one node's
NVLink when N divides the GPUs per node); the data-parallel rank is rank // N, the data-parallel
size world // N. DeepSpeed 0.19 takes sequence parallelism through `deepspeed.initialize(mpu=...)`
with the interface of its `deepspeed.runtime.sequence_parallel.parallel_state_sp` module: ZeRO
partitions and reduces gradients over the "sequence data parallel" group (all ranks) and divides
by world / N, i.e. gradients are SUMMED within a sequence group and AVERAGED across groups, which
is what a split model needs (each rank holds its tokens' share of every gradient). The model-
parallel getters alias the sequence group as in DeepSpeed's module, so DeepSpeed's own grad-norm
code counts replicated parameters once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


@dataclass
class SequenceParallelGroups:
    """This rank's place in the (data x sequence) layout, plus the groups (None when N = 1)."""

    size: int  # N: ranks sharing one batch
    rank: int  # this rank's index within its sequence group
    dp_rank: int  # which batch this rank's group reads (= global rank // N)
    dp_size: int  # number of sequence groups (= world // N)
    group: Any = None  # the sequence-parallel ProcessGroup of this rank
    seq_dp_group: Any = None  # every rank: ZeRO's partition and reduction group

    # -- DeepSpeed mpu interface (names and meaning as in parallel_state_sp) -----------------------

    def initialize_sequence_parallel(self, sequence_parallel_size: int) -> None:
        """Present so DeepSpeed recognises a sequence-parallel mpu; the groups exist already."""
        if sequence_parallel_size != self.size:
            raise ValueError(f"groups were built for N={self.size}, asked for {sequence_parallel_size}")

    def get_sequence_parallel_group(self) -> Any:
        return self.group

    def get_sequence_parallel_world_size(self) -> int:
        return self.size

    def get_sequence_parallel_rank(self) -> int:
        return self.rank

    def get_sequence_data_parallel_group(self) -> Any:
        return self.seq_dp_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.size * self.dp_size

    def get_sequence_data_parallel_rank(self) -> int:
        return self.dp_rank * self.size + self.rank

    @property
    def mpu(self) -> SequenceParallelGroups | None:
        """What `deepspeed.initialize(mpu=...)` gets: these groups when N > 1, else None."""
        return self if self.size > 1 else None

    get_model_parallel_group = get_sequence_parallel_group
    get_model_parallel_world_size = get_sequence_parallel_world_size
    get_model_parallel_rank = get_sequence_parallel_rank


def data_parallel_layout(rank: int, world_size: int, n: int) -> tuple[int, int]:
    """(dp_rank, dp_size) of a global rank: the loader's shard and seed index. N = 1: (rank, world)."""
    return rank // n, world_size // n


def build_sequence_parallel_groups(n: int) -> SequenceParallelGroups:
    """Create the groups (collective: every rank calls it, same n). N = 1 creates none."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if world % n:
        raise ValueError(f"distributed.sequence_parallel={n} must divide the world size {world}")
    dp_rank, dp_size = data_parallel_layout(rank, world, n)
    if n == 1:
        return SequenceParallelGroups(1, 0, dp_rank, dp_size)
    mine = None
    for g in range(dp_size):  # new_group is collective: every rank creates every group, in order
        pg = dist.new_group(list(range(g * n, (g + 1) * n)))
        if g == dp_rank:
            mine = pg
    seq_dp = dist.new_group(list(range(world)))
    return SequenceParallelGroups(n, rank % n, dp_rank, dp_size, mine, seq_dp)
