"""The training data: one or several datasets, each a bucket of one latent shape (`open_data`).

A run reads `data.shards` (one bucket) or `data.mix`, several datasets trained together (e.g.
videos and images as T = 1):

    data:
      mix:
        - {shards: /data/k700/shards, weight: 0.7}
        - {shards: /data/imagenet/shards, weight: 0.3}

Buckets. Each dataset is one bucket of one latent shape (a dataset holding several shapes follows
`data.drop_incompatible`). Every micro-batch is drawn from one bucket, so it has one shape, and
DeepSpeed sees the fixed `distributed.micro_batch_size`. The datasets must share the latent
channels (one model). The weights are rounded to integer shares (resolution 1/1000, gcd-reduced:
0.7 / 0.3 -> 7 / 3); which bucket each micro-batch comes from and the sample order within a bucket
are `dfm_video.data.sampler`'s: every optimizer step holds the mix across the ranks to within two
micro-batches per bucket (within one for the mixes in tests/test_images_mixture.py), and a
checkpoint's `samples_consumed` alone resumes every bucket. Ranks may get buckets of different
cost in one micro-step (an image beside a video): the faster one waits at the gradient reduction;
the mix counts micro-batches, not tokens.

Pyramid. In a mix, factors that act in time are skipped for T = 1 buckets (an image has no time
axis; in causal mode this changes nothing, in uniform mode it is required); the model's temporal
patches stay those of the config: a single frame is one temporal token whatever the patch
(`dfm_video.models.patch`). A single image dataset with a temporal factor is refused instead.
Standardisation is resolved per bucket (`dfm.standardize: null`: on for video, off for images).
Labels: the union of the datasets' label names, in mix order, so a class present in both (e.g.
"dog") is one class.

Run metadata. With one bucket, `dataset_meta()` is that dataset's meta (and the resolved
`dfm.standardize` is written back to the run's config); a mix adds every bucket's under "buckets".
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dfm_video.config import Config
from dfm_video.data.loader import Bucket, ShardDataset, open_bucket
from dfm_video.data.sampler import SHARE_RESOLUTION, ResumableSampler, integer_shares
from dfm_video.data.schema import DatasetInfo


def skip_temporal(factors: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """The pyramid factors of a T = 1 bucket: the config's with every temporal factor set to 1."""
    return [(1, int(f[1]), int(f[2])) for f in factors]


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
class TrainingData:
    """The datasets opened for training with `cfg`; `batches()` yields device-ready (levels, labels)."""

    cfg: Config
    buckets: list[Bucket]
    labels: list[str]
    shares: list[int]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The first bucket's finest (T, H, W) (throughput metrics are reported for it)."""
        return self.buckets[0].latent_shape

    @property
    def channels(self) -> int:
        return self.buckets[0].channels

    @property
    def dataset(self) -> MixedDataset:
        """Every bucket's samples end to end (its length enters the run's data fingerprint)."""
        return MixedDataset([b.dataset for b in self.buckets])

    def sampler(
        self, *, rank: int, world_size: int, start: int, resume: Optional[dict[str, Any]] = None
    ) -> ResumableSampler:
        """This rank's order from global sample `start`. `resume`: the checkpoint's data position
        (`ResumableSampler.position`), or {"micro_batch": M} for one that holds only the micro batch
        its samples were consumed with; None at a fresh start."""
        d = self.cfg.distributed
        sizes = [len(b.dataset) for b in self.buckets]
        common = dict(global_batch=d.global_batch_size, seed=self.cfg.train.seed, shuffle=self.cfg.data.shuffle)
        resume = dict(resume or {})
        if "micro_batch" in resume:  # replay the schedule at the micro batch the samples were consumed with
            old = int(resume.pop("micro_batch"))
            resume = ResumableSampler(sizes, self.shares, micro_batch=old, rank=0, world_size=1, **common).position(
                start
            )
        return ResumableSampler(
            sizes,
            self.shares,
            micro_batch=d.micro_batch_size,
            rank=rank,
            world_size=world_size,
            start=start,
            positions=resume.get("positions"),
            epoch_unit=resume.get("epoch_unit"),
            **common,
        )

    def batches(
        self,
        *,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        order: Optional[ResumableSampler] = None,
    ) -> Iterator[tuple[list[Tensor], Tensor]]:
        """Endless micro-batches for this rank from global sample position `start` (one bucket each),
        or in the given `order` (`sampler(...)`)."""
        workers = self.cfg.data.num_workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=order or self.sampler(rank=rank, world_size=world_size, start=start),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
        )
        for levels, labels, d in loader:
            yield self.buckets[d].prepare(levels, labels, device)

    def dataset_meta(self) -> dict[str, Any]:
        """What the sampler needs to make videos: the dataset's meta, for a mix the first bucket's (what the
        sampler makes by default) with the union of labels and every bucket's meta under "buckets"."""
        if len(self.buckets) == 1:
            return self.buckets[0].dataset_meta()
        buckets = []
        for b in self.buckets:
            m = b.dataset_meta()
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


def open_data(cfg: Config, source: str = "config") -> TrainingData:
    """Open `data.shards` (one bucket) or every dataset of `data.mix` and check them against cfg and
    each other, before any process group; every mismatch is a ValueError naming the key and values."""
    mix = cfg.data.mix
    if mix:
        roots, weights = [Path(m.shards) for m in mix], [m.weight for m in mix]
        keys = [f"data.mix[{i}].shards" for i in range(len(mix))]
    else:
        roots, weights, keys = [Path(cfg.data.shards)], [1.0], ["data.shards"]
    names = _bucket_names(roots)
    infos = []
    for root, key in zip(roots, keys):
        if not root.is_dir():
            raise ValueError(f"{source}: {key}='{root}' is not a directory (run data_pipeline.preprocess first)")
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
    shares = integer_shares(weights)
    tiny = [(names[i], weights[i]) for i, s in enumerate(shares) if s == 0]
    if tiny:
        raise ValueError(
            f"{source}: data.mix weights {tiny} are below 1/{SHARE_RESOLUTION} of the mix: those datasets would "
            "never fill a micro-batch; raise them or drop the datasets"
        )
    labels: list[str] = []
    buckets = []
    for i, (root, info) in enumerate(zip(roots, infos)):
        sub, where = cfg, source  # one dataset: its resolved settings are the run's (the saved config says so)
        if mix:  # each bucket of a mix resolves its own factors and standardisation
            sub, where = copy.deepcopy(cfg), f"{source} (data.mix[{i}])"
            sub.data.shards, sub.data.mix = str(root), []
            if int(info.level_shapes[-1][1]) == 1:
                sub.dfm.factors = skip_temporal(cfg.dfm.factors)
        bucket = open_bucket(sub, info, where, names[i])
        bucket.weight = shares[i] / sum(shares)
        _check_size(cfg, bucket, keys[i], source, one=not mix)
        for label in info.labels:
            if label not in labels:
                labels.append(label)
        if labels != info.labels:  # the dataset's ids are not the run's
            bucket.label_map = torch.tensor([labels.index(lb) for lb in info.labels] or [0], dtype=torch.long)
        buckets.append(bucket)
    if len(labels) > cfg.model.num_classes:
        raise ValueError(
            f"{source}: model.num_classes={cfg.model.num_classes} but the datasets of data.mix have "
            f"{len(labels)} distinct labels together"
        )
    if mix:
        desc = ", ".join(
            f"'{b.name}' {b.weight:.3f} (latent {[b.channels, *b.latent_shape]}, "
            f"factors {[list(f) for f in b.cfg.dfm.factors]}, standardize={str(b.cfg.dfm.standardize).lower()})"
            for b in buckets
        )
        print(f"data: mixing {len(buckets)} datasets per micro-batch: {desc}", flush=True)
    return TrainingData(cfg, buckets, labels, shares)


def _check_size(cfg: Config, bucket: Bucket, key: str, source: str, one: bool) -> None:
    """One dataset fills whole global batches (an epoch is whole optimizer steps); a mixed one whole micro-batches."""
    n, d = len(bucket.dataset), cfg.distributed
    if one and n < d.global_batch_size:
        raise ValueError(
            f"{source}: {key}='{bucket.info.root}' has {n} usable clips, fewer than one global batch "
            f"(distributed.global_batch_size={d.global_batch_size}); lower distributed.global_batch_size or add data"
        )
    if not one and n < d.micro_batch_size:
        raise ValueError(
            f"{source}: {key[: -len('.shards')]} '{bucket.name}' ({bucket.info.root}) has {n} usable clips, fewer "
            f"than one micro-batch (distributed.micro_batch_size={d.micro_batch_size}): its buckets cannot fill a "
            "micro-batch; add data or lower it"
        )


def latent_shapes(data: TrainingData) -> list[tuple[int, int, int]]:
    """The finest latent (T, H, W) of every dataset the run reads."""
    return [b.latent_shape for b in data.buckets]
