"""Joint training on several datasets (e.g. videos and images as T = 1): `data.mix`.

    data:
      mix:
        - {shards: /data/k700/shards, weight: 0.7}
        - {shards: /data/imagenet/shards, weight: 0.3}

Buckets. Each dataset of the mix is one bucket of one latent shape (a dataset holding several
shapes follows `data.drop_incompatible` exactly as a single dataset does). Every micro-batch is
drawn from one bucket, so it has one shape, and DeepSpeed sees the fixed
`distributed.micro_batch_size`. The datasets must share the latent channels (one model).

Schedule. The weights are normalised and rounded to integer shares a_d of a period P = sum a_d
(resolution 1/1000, reduced by their gcd: 0.7 / 0.3 -> 7 / 3, P = 10). Global micro-batch slot j
(micro-step s on rank r of W: j = s*W + r) goes to bucket `schedule[j % P]`, a smooth weighted
round robin: after n slots bucket d has had n*a_d/P micro-batches to within one, so every optimizer
step holds the mix across the ranks to within two micro-batches per bucket (within one for the
mixes in tests/test_images_mixture.py), and every period holds it exactly. Ranks may get buckets
of different cost in one micro-step (an image beside a video): the faster one waits at the
gradient reduction; the mix counts micro-batches, not tokens.

Order and resume. Bucket d's k-th micro-batch (counted over all ranks) is slice [k*M, (k+1)*M) of
its epoch permutation, drawn from (train.seed, d, epoch); an epoch's tail shorter than M is
dropped. k follows from j in O(1), and j from the number of samples consumed, so a checkpoint's
`samples_consumed` alone puts every bucket back where it stopped (no extra state).

Pyramid. Factors that act in time are skipped for T = 1 buckets (an image has no time axis; in
causal mode this changes nothing, in uniform mode it is required); the model's temporal patches
stay those of the config: a single frame is one temporal token whatever the patch
(`dfm_video.models.patch`). Standardisation is resolved per bucket (`dfm.standardize: null`:
on for video, off for images). Labels: the union of the datasets' label names, in mix order, so
a class present in both (e.g. "dog") is one class.
"""

from __future__ import annotations

import bisect
import copy
import math
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from dfm_video.config import Config
from dfm_video.data.loader import ShardDataset, TrainingData, open_training_data
from dfm_video.data.schema import DatasetInfo

SHARE_RESOLUTION = 1000  # weights are rounded to 1/1000 of the mix


def skip_temporal(factors: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """The pyramid factors of a T = 1 bucket: the config's with every temporal factor set to 1."""
    return [(1, int(f[1]), int(f[2])) for f in factors]


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


class MixtureBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches (indices into the concatenated buckets) from global sample position `start`."""

    def __init__(
        self,
        sizes: Sequence[int],
        schedule: MixSchedule,
        *,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        small = [(d, n) for d, n in enumerate(sizes) if n < micro_batch]
        if small:
            raise ValueError(f"buckets {small} (index, samples) cannot fill a micro-batch of {micro_batch}")
        if start % micro_batch:
            raise ValueError(f"sample position {start} is not a multiple of the micro-batch {micro_batch}")
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.cumsum([0, *self.sizes[:-1]]).tolist()
        self.schedule = schedule
        self.M, self.rank, self.W = micro_batch, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.start_slot = start // micro_batch
        self._orders: dict[int, tuple[int, Tensor]] = {}  # bucket -> (epoch, permutation)

    def _order(self, d: int, epoch: int) -> Tensor:
        cached = self._orders.get(d)
        if cached is None or cached[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 8191 + d)
                cached = (epoch, torch.randperm(self.sizes[d], generator=g))
            else:
                cached = (epoch, torch.arange(self.sizes[d]))
            self._orders[d] = cached
        return cached[1]

    def micro_batch(self, slot: int) -> tuple[int, list[int]]:
        """(bucket, global indices) of global micro-batch `slot`."""
        d = self.schedule.bucket(slot)
        k = self.schedule.count_before(slot, d)
        epoch, off = divmod(k, self.sizes[d] // self.M)
        idx = self._order(d, epoch)[off * self.M : (off + 1) * self.M]
        return d, (idx + self.offsets[d]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        slot = self.start_slot + self.rank
        while True:
            yield self.micro_batch(slot)[1]
            slot += self.W

    def __len__(self) -> int:  # infinite stream
        return 2**62


class MixedDataset(Dataset):
    """The buckets' datasets end to end: global index -> (levels, label id in its dataset, bucket)."""

    def __init__(self, parts: Sequence[ShardDataset]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0, *[len(p) for p in self.parts]]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> tuple[list[Tensor], int, int]:
        d = bisect.bisect_right(self.starts, i) - 1
        levels, label = self.parts[d][i - self.starts[d]]
        return levels, label, d


def _collate(items: list[tuple[list[Tensor], int, int]]) -> tuple[list[Tensor], Tensor, int]:
    bucket = items[0][2]
    assert all(it[2] == bucket for it in items), "a micro-batch mixes buckets"
    levels = [torch.stack([it[0][s] for it in items]) for s in range(len(items[0][0]))]
    return levels, torch.tensor([it[1] for it in items], dtype=torch.long), bucket


@dataclass
class Bucket:
    name: str
    weight: float  # normalised share actually used
    data: TrainingData
    label_map: Tensor  # dataset label id -> mix label id

    @property
    def frames(self) -> int:
        return self.data.latent_shape[0]


@dataclass
class MixtureData:
    """Several datasets opened for training with `cfg`; the same interface as `TrainingData`."""

    cfg: Config
    buckets: list[Bucket]
    labels: list[str]
    schedule: MixSchedule

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The first bucket's finest (T, H, W) (throughput metrics are reported for it)."""
        return self.buckets[0].data.latent_shape

    @property
    def channels(self) -> int:
        return self.buckets[0].data.channels

    @property
    def dataset(self) -> MixedDataset:
        """Every bucket's samples end to end (its length enters the run's data fingerprint)."""
        return MixedDataset([b.data.dataset for b in self.buckets])

    def sampler(self, *, rank: int, world_size: int, start: int) -> MixtureBatchSampler:
        return MixtureBatchSampler(
            [len(b.data.dataset) for b in self.buckets],
            self.schedule,
            micro_batch=self.cfg.distributed.micro_batch_size,
            rank=rank,
            world_size=world_size,
            seed=self.cfg.train.seed,
            shuffle=self.cfg.data.shuffle,
            start=start,
        )

    def batches(
        self, *, rank: int, world_size: int, start: int, device: torch.device
    ) -> Iterator[tuple[list[Tensor], Tensor]]:
        """Endless micro-batches for this rank from global sample position `start` (one bucket each)."""
        workers = self.cfg.data.num_workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler(rank=rank, world_size=world_size, start=start),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )
        for levels, labels, d in loader:
            b = self.buckets[d]
            labels = torch.where(labels >= 0, b.label_map[labels.clamp(min=0)], labels)
            yield b.data._prepare(levels, labels, device)

    def dataset_meta(self) -> dict[str, Any]:
        """The first bucket's meta (what the sampler makes by default) plus every bucket's under "buckets"."""
        buckets = []
        for b in self.buckets:
            m = b.data.dataset_meta()
            m.pop("labels")
            buckets.append({"name": b.name, "weight": b.weight, **m})
        return {**buckets[0], "labels": list(self.labels), "buckets": buckets}


def bucket_meta(meta: dict[str, Any], key: str) -> dict[str, Any]:
    """The dataset meta of one bucket of a mixed run, chosen by index or name (for sampling)."""
    buckets = meta.get("buckets")
    if not buckets:
        raise ValueError(
            f"--bucket {key}: this model was trained on one dataset ({meta.get('source')}), it has no buckets"
        )
    names = [b["name"] for b in buckets]
    if key.isdigit() and int(key) < len(buckets):
        chosen = buckets[int(key)]
    elif key in names:
        chosen = buckets[names.index(key)]
    else:
        listing = ", ".join(f"{i}: {b['name']} (latent {b['latent_shape']})" for i, b in enumerate(buckets))
        raise ValueError(f"--bucket {key}: no such bucket; this model has {listing}")
    return {**chosen, "labels": meta["labels"]}


def _bucket_names(roots: Sequence[Path]) -> list[str]:
    names = [r.name for r in roots]
    if len(set(names)) < len(names):  # e.g. every dataset's folder is called "shards"
        names = [f"{r.parent.name}/{r.name}" for r in roots]
    if len(set(names)) < len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    return names


def open_mixture(cfg: Config, source: str = "config") -> MixtureData:
    """Open every dataset of cfg.data.mix and check them against cfg and each other (before any process group)."""
    mix = cfg.data.mix
    roots = [Path(m.shards) for m in mix]
    names = _bucket_names(roots)
    infos = []
    for i, root in enumerate(roots):
        if not root.is_dir():
            raise ValueError(
                f"{source}: data.mix[{i}].shards='{root}' is not a directory (run data_pipeline.preprocess first)"
            )
        infos.append(DatasetInfo.load(root))
    channels = [int(info.level_shapes[-1][0]) for info in infos]
    if len(set(channels)) > 1:
        listing = ", ".join(
            f"'{n}' ({roots[i]}): {channels[i]} channels, autoencoder '{infos[i].autoencoder.get('id')}'"
            for i, n in enumerate(names)
        )
        raise ValueError(
            f"{source}: the datasets of data.mix have different latent channels ({listing}); one model "
            "needs one latent space: encode them with the same autoencoder"
        )
    shares = integer_shares([m.weight for m in mix])
    tiny = [(names[i], mix[i].weight) for i, s in enumerate(shares) if s == 0]
    if tiny:
        raise ValueError(
            f"{source}: data.mix weights {tiny} are below 1/{SHARE_RESOLUTION} of the mix: those datasets would "
            "never fill a micro-batch; raise them or drop the datasets"
        )
    labels: list[str] = []
    buckets = []
    for i, (root, info) in enumerate(zip(roots, infos)):
        sub = copy.deepcopy(cfg)
        sub.data.shards, sub.data.mix = str(root), []
        frames = int(info.level_shapes[-1][1])
        if frames == 1:
            sub.dfm.factors = skip_temporal(cfg.dfm.factors)
        data = open_training_data(sub, f"{source} (data.mix[{i}])")
        n, M = len(data.dataset), cfg.distributed.micro_batch_size
        if n < M:
            raise ValueError(
                f"{source}: data.mix[{i}] '{names[i]}' ({root}) has {n} usable clips, fewer than one micro-batch "
                f"(distributed.micro_batch_size={M}): its buckets cannot fill a micro-batch; add data or lower it"
            )
        for label in info.labels:
            if label not in labels:
                labels.append(label)
        label_map = torch.tensor([labels.index(lb) for lb in info.labels] or [0], dtype=torch.long)
        buckets.append(Bucket(names[i], shares[i] / sum(shares), data, label_map))
    if len(labels) > cfg.model.num_classes:
        raise ValueError(
            f"{source}: model.num_classes={cfg.model.num_classes} but the datasets of data.mix have "
            f"{len(labels)} distinct labels together"
        )
    desc = ", ".join(
        f"'{b.name}' {b.weight:.3f} (latent {[b.data.channels, *b.data.latent_shape]}, "
        f"factors {[list(f) for f in b.data.cfg.dfm.factors]}, standardize={str(b.data.cfg.dfm.standardize).lower()})"
        for b in buckets
    )
    print(f"data: mixing {len(buckets)} datasets per micro-batch: {desc}", flush=True)
    return MixtureData(cfg, buckets, labels, MixSchedule(shares))


def latent_shapes(data: TrainingData | MixtureData) -> list[tuple[int, int, int]]:
    """The finest latent (T, H, W) of every dataset the run reads (one unless `data.mix`)."""
    return [b.data.latent_shape for b in data.buckets] if isinstance(data, MixtureData) else [data.latent_shape]


def open_data(cfg: Config, source: str = "config") -> TrainingData | MixtureData:
    """The trainer's data: `data.mix` when given, else the single `data.shards`."""
    return open_mixture(cfg, source) if cfg.data.mix else open_training_data(cfg, source)
