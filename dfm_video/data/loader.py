"""One dataset of preprocessed shards opened for training: validated against the config, read by index.

Batches have one shape: a dataset whose clips have several latent shapes is refused, or with
`data.drop_incompatible` only its most common shape is kept (the others are counted and named).
Pyramids stored with other factors than the config's are recomposed and re-decomposed exactly on
the device (the Laplacian pyramid is linear and invertible); per-level statistics exist only for
the stored pyramid, so that path requires `dfm.standardize: false`.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dfm_video.config import Config, load_config
from dfm_video.data.schema import (
    CONFIG_FILE,
    DatasetInfo,
    decode_level,
    level_column,
    level_shape_column,
    read_shard_meta,
)
from dfm_video.dfm import LevelStats, decompose, level_shapes, recompose, standardize


class ShardDataset(Dataset):
    """Random access to clips: index -> (levels as stored, label id). Keeps a few row groups cached."""

    def __init__(
        self,
        index: list[tuple[Path, int, int]],
        num_levels: int,
        cache_groups: int = 4,
        dtypes: Optional[dict[Path, str]] = None,
    ) -> None:
        self.index = index  # (shard path, row group, row within group)
        self.num_levels = num_levels
        self.dtypes = dtypes or {}  # latent storage dtype per shard (float32 when absent)
        self.cache_groups = cache_groups
        self._cache: OrderedDict[tuple[Path, int], dict[str, list]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.index)

    def _group(self, path: Path, group: int) -> dict[str, list]:
        key = (path, group)
        if key not in self._cache:
            cols = ["label_id"] + [c for s in range(self.num_levels) for c in (level_column(s), level_shape_column(s))]
            table = pq.ParquetFile(path).read_row_group(group, columns=cols)
            self._cache[key] = {c: table.column(c).to_pylist() for c in cols}
            if len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        return self._cache[key]

    def __getitem__(self, i: int) -> tuple[list[Tensor], int]:
        path, group, row = self.index[i]
        g = self._group(path, group)
        levels = []
        for s in range(self.num_levels):
            levels.append(
                decode_level(g[level_column(s)][row], g[level_shape_column(s)][row], self.dtypes.get(path, "float32"))
            )
        return levels, int(g["label_id"][row])


@dataclass
class Bucket:
    """One dataset of the run, opened and checked against `cfg` (its own copy when the run mixes datasets)."""

    name: str
    cfg: Config
    info: DatasetInfo
    dataset: ShardDataset
    latent_shape: tuple[int, int, int]  # finest (T, H, W) of the configured pyramid
    channels: int
    stats: Optional[LevelStats]
    redecompose: bool
    dropped: int
    weight: float = 1.0  # normalised share of the micro-batches actually used
    label_map: Optional[Tensor] = None  # dataset label id -> run label id (None: the same ids)

    @property
    def frames(self) -> int:
        return self.latent_shape[0]

    def prepare(self, levels: list[Tensor], labels: Tensor, device: torch.device) -> tuple[list[Tensor], Tensor]:
        """A collated micro-batch of this bucket -> device-ready (levels, run label ids)."""
        levels = [x.to(device, non_blocking=True) for x in levels]
        if self.redecompose:
            full = recompose(levels, self.info.factors, self.info.temporal_mode)
            levels = decompose(full, self.cfg.dfm.factors, self.cfg.dfm.temporal_mode)
        if self.stats is not None:
            levels = standardize(levels, self.stats)
        if self.label_map is not None:
            labels = torch.where(labels >= 0, self.label_map[labels.clamp(min=0)], labels)
        labels = labels.to(device)
        # unlabelled clips (label_id -1) train the unconditional branch
        labels = torch.where(labels < 0, torch.full_like(labels, self.cfg.model.num_classes), labels)
        return levels, labels

    def dataset_meta(self) -> dict[str, Any]:
        """What the sampler needs to turn generated levels into video (saved beside the export)."""
        return {
            "labels": self.info.labels,
            "autoencoder": self.info.autoencoder,
            "latent_shape": [self.channels, *self.latent_shape],
            "factors": [list(f) for f in self.cfg.dfm.factors],
            "temporal_mode": self.cfg.dfm.temporal_mode,
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "fps": self.fps,
            "source": str(self.info.root),
        }

    @property
    def fps(self) -> float:
        """Frame rate the clips were sampled at (from the dataset's resolved preprocessing config)."""
        path = self.info.root / CONFIG_FILE
        return load_config(path).preprocess.fps if path.is_file() else 8.0


def resolve_standardize(requested: Optional[bool], frames: int, root: Path) -> bool:
    """`dfm.standardize` for a dataset of `frames` latent frames: an explicit value wins, None follows
    the paper (on for video, off for images); the choice is logged either way."""
    value = requested if requested is not None else frames > 1
    why = (
        "set in the config"
        if requested is not None
        else f"default for {'video' if frames > 1 else 'image (T = 1)'} data"
    )
    print(f"data: dfm.standardize={str(value).lower()} for {root} ({why})", flush=True)
    return value


def open_bucket(cfg: Config, info: DatasetInfo, source: str = "config", name: str = "") -> Bucket:
    """Open the dataset `info` for training with cfg and check it against cfg; every mismatch is a
    ValueError naming both sides. `cfg.dfm.standardize` is resolved in place."""
    root = info.root
    if not info.shards:
        raise ValueError(f"{root}: no shards (every clip was rejected? see {root}/rejects.parquet)")
    codec = info.autoencoder
    index: list[tuple[Path, int, int]] = []
    shapes: list[tuple] = []
    dtypes: dict[Path, str] = {}
    for path in info.shards:
        meta = read_shard_meta(path)
        dtypes[path] = meta.latent_dtype
        if meta.autoencoder.get("id") != codec.get("id"):
            raise ValueError(
                f"{path}: encoded with autoencoder '{meta.autoencoder.get('id')}', the dataset with '{codec.get('id')}'"
            )
        pf = pq.ParquetFile(path)
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            index += [(path, g, r) for r in range(n)]
            shapes += [tuple(tuple(s) for s in meta.level_shapes)] * n
    counts = Counter(shapes)
    dropped = 0
    if len(counts) > 1:
        if not cfg.data.drop_incompatible:
            listing = ", ".join(f"{n} clips of {list(map(list, s))}" for s, n in counts.most_common())
            raise ValueError(
                f"{root}: clips have different latent shapes ({listing}); "
                "set data.drop_incompatible=true to keep the most common"
            )
        keep = counts.most_common(1)[0][0]
        dropped = len(index) - counts[keep]
        index = [ix for ix, s in zip(index, shapes) if s == keep]
        print(
            f"data: kept {len(index)} clips of shape {list(map(list, keep))}, dropped {dropped} of other shapes",
            flush=True,
        )
    stored = [list(s) for s in counts.most_common(1)[0][0]]  # (C, T, H, W) per stored level
    channels = stored[-1][0]
    if channels != cfg.model.in_channels:
        raise ValueError(
            f"{source}: model.in_channels={cfg.model.in_channels} but "
            f"the shards in {root} have {channels} latent channels "
            f"(autoencoder '{codec.get('id')}')"
        )
    if len(info.labels) > cfg.model.num_classes:
        raise ValueError(
            f"{source}: model.num_classes={cfg.model.num_classes} but {root} has {len(info.labels)} labels"
        )
    finest = tuple(stored[-1][1:])
    if finest[0] == 1 and any(f[0] != 1 for f in cfg.dfm.factors):
        raise ValueError(
            f"{source}: {root} holds images (latent T = 1) but dfm.factors={[list(f) for f in cfg.dfm.factors]} has a "
            "temporal factor; images have no time axis to decompose: use ft = 1 (e.g. [[1, 2, 2]]), or train them "
            "beside videos with data.mix, which skips temporal factors for T = 1 datasets"
        )
    cfg.dfm.standardize = resolve_standardize(cfg.dfm.standardize, finest[0], root)  # the saved config says what ran
    same = [list(f) for f in info.factors] == [
        list(f) for f in cfg.dfm.factors
    ] and info.temporal_mode == cfg.dfm.temporal_mode
    if not same:
        try:
            level_shapes(finest, cfg.dfm.factors, cfg.dfm.temporal_mode)
        except ValueError as exc:
            raise ValueError(
                f"{source}: dfm.factors {cfg.dfm.factors} cannot decompose the latents of {root}: {exc}"
            ) from exc
        single = cfg.dfm.num_stages == 1 and info.latent_moments is not None
        if cfg.dfm.standardize and not single:
            raise ValueError(
                f"{source}: the shards in {root} were decomposed with "
                f"factors {info.factors} ({info.temporal_mode}), the config "
                f"asks for {[list(f) for f in cfg.dfm.factors]} "
                f"({cfg.dfm.temporal_mode}); they can be re-decomposed exactly, but "
                "statistics exist only for the stored pyramid and the whole latent (flow matching, dfm.num_stages=1"
                + ("" if info.latent_moments is not None else "; these shards predate whole-latent statistics")
                + "): set dfm.standardize=false or preprocess into a new output_dir with these factors"
            )
    stats = None
    if cfg.dfm.standardize:
        stats = info.stats() if same else info.latent_moments.stats()
    return Bucket(
        name=name or root.name,
        cfg=cfg,
        info=info,
        dataset=ShardDataset(index, len(stored), dtypes=dtypes),
        latent_shape=finest,
        channels=channels,
        stats=stats,
        redecompose=not same,
        dropped=dropped,
    )
