"""Deterministic, resumable, rank-sharded sample order.

Epoch e's order is a permutation drawn from (seed, e). Optimizer step k consumes the global slice
perm[k*G : (k+1)*G] (G = global batch); within it, micro-step a of rank r takes
[a*W*M + r*M : a*W*M + (r+1)*M] (W ranks, M micro-batch). The position is just the number of
samples consumed globally, so a resume from a checkpoint neither repeats nor skips a sample, and
the order does not depend on the number of DataLoader workers. An epoch's tail shorter than G is
dropped (every step has the full global batch).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields this rank's dataset indices from global sample position `start` onwards, forever."""

    def __init__(
        self,
        num_samples: int,
        *,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch ({global_batch}); "
                "lower distributed.global_batch_size or add data"
            )
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x world {world_size}"
            )
        self.n = num_samples
        self.G, self.M, self.W, self.rank = global_batch, micro_batch, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.start = start
        self.steps_per_epoch = num_samples // global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        used = self.steps_per_epoch * self.G  # samples consumed per epoch
        pos = self.start
        while True:
            epoch, offset = divmod(pos, used)
            order = self.epoch_order(epoch)
            step_start = offset - offset % self.G
            within = offset - step_start  # samples of this step already consumed (a multiple of W*M)
            for k in range(step_start, used, self.G):
                block = order[k : k + self.G]
                for a in range(within // (self.W * self.M), self.G // (self.W * self.M)):
                    base = a * self.W * self.M + self.rank * self.M
                    yield from block[base : base + self.M].tolist()
                within = 0
            pos = (epoch + 1) * used

    def __len__(self) -> int:  # infinite stream; DataLoader only needs this for progress bars
        return 2**62
