"""Deterministic, resumable, rank-sharded micro-batches over one or more buckets of samples.

Every micro-batch comes from one bucket (one dataset of one latent shape). The samples are the
buckets end to end: bucket d owns global indices [offset_d, offset_d + n_d).

Schedule. Integer shares a_d (`MixSchedule`) give a period P = sum a_d. Global micro-batch slot j
(micro-step s on rank r of W: j = s*W + r) goes to bucket `schedule[j % P]`, a smooth weighted
round robin: after n slots bucket d has had n*a_d/P micro-batches to within one, and every period
holds the mix exactly. One bucket takes every slot.

Order. Each bucket is a stream of samples: its epochs' permutations end to end. A bucket's
position is the number of its samples consumed (over all ranks), counted in samples, so a resume
with another micro batch (another world size) continues every bucket exactly where it stopped:
bucket d's next micro-batch is stream_d[p_d, p_d + M) (it may straddle an epoch boundary).
- One bucket: an epoch is the whole optimizer steps that fit (floor(n / G) * G samples for the
  global batch G; the shorter tail is dropped, so every step draws G distinct samples), and
  epoch e's permutation is drawn from (seed, e). The position is the global sample count itself.
- Several buckets: an epoch is floor(n_d / U) * U samples for the run's epoch unit U (the micro
  batch the run started with, kept in the checkpoint so the epoch boundaries never move), and the
  permutation is drawn from (seed, e, d). The per-bucket positions at a checkpoint come from
  `position(samples_consumed)` and are stored with it; with them, `start` and the micro batch of
  the resumed run, the order continues. Without them (a fresh start, or a checkpoint that holds
  only its micro batch), the positions follow from `start` and that micro batch through the schedule.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

SHARE_RESOLUTION = 1000  # weights are rounded to 1/1000 of the mix


def integer_shares(weights: Sequence[float]) -> list[int]:
    """Positive weights -> integer shares with the same ratios to 1/SHARE_RESOLUTION, gcd-reduced."""
    total = float(sum(weights))
    shares = [round(w / total * SHARE_RESOLUTION) for w in weights]
    g = reduce(math.gcd, shares)
    return [s // g for s in shares] if g else shares


class MixSchedule:
    """Which bucket global micro-batch slot j belongs to, and how many slots before j each bucket had."""

    def __init__(self, shares: Sequence[int]) -> None:
        if not shares or any(s < 1 for s in shares):
            raise ValueError(f"mix shares must be positive integers, got {list(shares)}")
        self.shares = [int(s) for s in shares]
        self.period = P = sum(self.shares)
        current = [0] * len(shares)
        order = []
        for _ in range(P):  # smooth weighted round robin (each slot to the bucket most behind)
            current = [c + s for c, s in zip(current, self.shares)]
            d = max(range(len(current)), key=lambda i: (current[i], -i))
            current[d] -= P
            order.append(d)
        self.order = order
        prefix = np.zeros((P + 1, len(shares)), dtype=np.int64)
        for i, d in enumerate(order):
            prefix[i + 1] = prefix[i]
            prefix[i + 1, d] += 1
        self.prefix = prefix

    def bucket(self, slot: int) -> int:
        return self.order[slot % self.period]

    def count_before(self, slot: int, bucket: int) -> int:
        """Slots < `slot` that went to `bucket`."""
        q, r = divmod(slot, self.period)
        return q * self.shares[bucket] + int(self.prefix[r, bucket])


class ResumableSampler(Sampler[list[int]]):
    """This rank's micro-batches (global indices into the buckets end to end) from sample position `start`.

    `positions`: each bucket's samples consumed at `start` (from `position()` at the checkpoint);
    `epoch_unit`: the micro batch the run's epochs are counted in (several buckets). Both default to
    what `start` and `micro_batch` give, which is exact whenever the micro batch never changed.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        shares: Sequence[int],
        *,
        global_batch: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        start: int = 0,
        positions: Optional[Sequence[int]] = None,
        epoch_unit: Optional[int] = None,
    ) -> None:
        if len(sizes) != len(shares):
            raise ValueError(f"{len(sizes)} bucket sizes but {len(shares)} shares")
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x world {world_size}"
            )
        if start % micro_batch:
            raise ValueError(f"sample position {start} is not a multiple of the micro-batch {micro_batch}")
        self.sizes = [int(n) for n in sizes]
        self.epoch_unit = int(epoch_unit or micro_batch)
        # samples per epoch of each bucket (the module docstring says why one bucket counts whole steps)
        unit = global_batch if len(self.sizes) == 1 else self.epoch_unit
        if len(self.sizes) == 1 and self.sizes[0] < global_batch:
            raise ValueError(
                f"the dataset has {self.sizes[0]} samples, fewer than one global batch ({global_batch}); "
                "lower distributed.global_batch_size or add data"
            )
        small = [(d, n) for d, n in enumerate(self.sizes) if n < max(micro_batch, unit)]
        if small:
            raise ValueError(f"buckets {small} (index, samples) cannot fill a micro-batch of {max(micro_batch, unit)}")
        self.epoch_len = [n // unit * unit for n in self.sizes]  # samples per epoch
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.schedule = MixSchedule(shares)
        self.M, self.rank, self.W = micro_batch, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.start_slot = start // micro_batch
        derived = [micro_batch * self.schedule.count_before(self.start_slot, d) for d in range(len(self.sizes))]
        if positions is not None and len(positions) != len(self.sizes):
            raise ValueError(f"{len(positions)} bucket positions for {len(self.sizes)} buckets")
        self.base = [int(p) for p in positions] if positions is not None else derived
        self._orders: dict[tuple[int, int], torch.Tensor] = {}  # (bucket, epoch) -> permutation

    def _order(self, d: int, epoch: int) -> torch.Tensor:
        cached = self._orders.get((d, epoch))
        if cached is None:
            if len(self._orders) > 8:
                self._orders.clear()
            if self.shuffle:
                key = self.seed * 1_000_003 + epoch
                if len(self.sizes) > 1:
                    key = key * 8191 + d
                cached = torch.randperm(self.sizes[d], generator=torch.Generator().manual_seed(key))
            else:
                cached = torch.arange(self.sizes[d])
            self._orders[(d, epoch)] = cached
        return cached

    def _bucket_position(self, slot: int, d: int) -> int:
        """Samples of bucket d consumed before global micro-batch `slot` (slot >= the start slot)."""
        ran = self.schedule.count_before(slot, d) - self.schedule.count_before(self.start_slot, d)
        return self.base[d] + self.M * ran

    def micro_batch(self, slot: int) -> tuple[int, list[int]]:
        """(bucket, global indices) of global micro-batch `slot`."""
        d = self.schedule.bucket(slot)
        pos, length, out = self._bucket_position(slot, d), self.epoch_len[d], []
        while len(out) < self.M:
            epoch, off = divmod(pos, length)
            take = min(self.M - len(out), length - off)
            out += self._order(d, epoch)[off : off + take].tolist()
            pos += take
        return d, [i + self.offsets[d] for i in out]

    def position(self, consumed: int) -> dict[str, Any]:
        """What a checkpoint after `consumed` global samples stores to resume this order with any micro batch."""
        if consumed % self.M:
            raise ValueError(f"sample position {consumed} is not a multiple of the micro-batch {self.M}")
        slot = consumed // self.M
        return {
            "positions": [self._bucket_position(slot, d) for d in range(len(self.sizes))],
            "epoch_unit": self.epoch_unit,
        }

    def __iter__(self) -> Iterator[list[int]]:
        slot = self.start_slot + self.rank
        while True:
            yield self.micro_batch(slot)[1]
            slot += self.W

    def __len__(self) -> int:  # infinite stream; DataLoader only needs this for progress bars
        return 2**62
