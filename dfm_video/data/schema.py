"""The preprocessed-data format: the ONE definition shared by the shard writer and every reader.

A dataset directory (written by `data_pipeline.preprocess`) holds:

    shards/shard-<hash>.parquet   one row per clip (columns below); complete files only
    rejects/part-<hash>.parquet   clips that failed a stage (the durable per-batch record)
    rejects.parquet               all rejects in one table (rebuilt at the end of every run)
    labels.json                   {"schema_version", "labels": [name, ...]}: label id = list index
    stats.json                    {"schema_version", "num_samples", "moments", "stats",
                                  "latent_moments"}: per-level, per-channel `LevelMoments`
                                  (mergeable) and `LevelStats` (mean/std), plus the moments of
                                  the whole latent (one level: for flow-matching baselines)
    manifest.json                 counts, shard list, level shapes, codec, factors, run history
    config.yaml                   the resolved `Config` of the run

Shard columns (Parquet): key (string, unique in the dataset), label (string, "" = unlabelled),
label_id (int32, -1 = unlabelled), split, source_path, fps (float32, rate of the sampled frames;
0 for images), source_fps, frame_indices (list<int32>, source frame of each sampled frame), and
source_height, source_width (int32, the displayed size of the source video, after rotation;
absent in older shards: read as 0), and for each pyramid level s = 0..S-1
(coarse to fine) `level_{s}` (large_binary: the (C, T, H, W) latent as raw little-endian values of
the shard's `latent_dtype`, float32 / float16 / bfloat16, C-order) plus `level_{s}_shape`
(list<int32> = [C, T, H, W]). One clip per row group: a random training read pulls one clip.
Latents are the codec's scaled latents BEFORE per-level standardisation; the trainer standardises
with stats.json. Raw bytes decode with one `np.frombuffer` (no per-element Arrow work), and level
columns are stored uncompressed (float noise does not compress) so reading is memory-bound.

Every shard's Parquet key-value metadata holds a `ShardMeta` JSON under `dfm_video.shard`: schema
version, codec description (id, kind, path, scaling, geometry), factors, temporal mode, level
shapes, sample count and the shard's own `LevelMoments` (so dataset statistics stay exact when a
resumed run adds shards: they are merged from the shards, never re-estimated).

Readers: `DatasetInfo.load(root)`, `list_shards(root)`, `read_shard(path)`, `iter_samples(path)`,
`read_shard_meta(path)`. Writers: `write_shard(path, samples, meta)` (atomic), `write_json_atomic`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from dfm_video.dfm.standardize import LevelMoments, LevelStats

SCHEMA_VERSION = 1

SHARD_DIR = "shards"
REJECTS_DIR = "rejects"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"  # files being written; never read, removed by the next run
LABELS_FILE = "labels.json"
STATS_FILE = "stats.json"
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.parquet"
CONFIG_FILE = "config.yaml"
META_KEY = b"dfm_video.shard"
LATENT_DTYPE = "<f4"  # storage of float32 shards (kept for readers that import it); see STORAGE

# Clip columns, in file order; the level columns follow.
CLIP_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_id", pa.int32()),
    pa.field("split", pa.string()),
    pa.field("source_path", pa.string()),
    pa.field("fps", pa.float32()),
    pa.field("source_fps", pa.float32()),
    pa.field("frame_indices", pa.list_(pa.int32())),
    pa.field("source_height", pa.int32()),
    pa.field("source_width", pa.int32()),
]
# Columns added after the first shards were written: old shards lack them, readers use these defaults.
OPTIONAL_DEFAULTS = {"source_height": 0, "source_width": 0}
# Raw little-endian storage of each latent dtype (bfloat16 travels as its 16-bit pattern).
STORAGE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<i2"}

REJECT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("path", pa.string()),
        pa.field("stage", pa.string()),  # source | decode | encode
        pa.field("reason", pa.string()),  # short category, e.g. "too short"
        pa.field("detail", pa.string()),  # the full message
        pa.field("run_id", pa.string()),  # the run that made the record ("" in parts written before it existed)
    ]
)


def level_column(s: int) -> str:
    return f"level_{s}"


def level_shape_column(s: int) -> str:
    return f"level_{s}_shape"


def shard_schema(num_levels: int) -> pa.Schema:
    fields = list(CLIP_FIELDS)
    for s in range(num_levels):
        fields += [pa.field(level_column(s), pa.large_binary()), pa.field(level_shape_column(s), pa.list_(pa.int32()))]
    return pa.schema(fields)


def check_version(found: Any, where: str | Path) -> None:
    if found != SCHEMA_VERSION:
        raise ValueError(
            f"{where}: schema_version {found!r}, this code reads version {SCHEMA_VERSION}; "
            f"re-run data_pipeline.preprocess into a fresh output directory"
        )


@dataclass
class Sample:
    """One clip as stored: levels are (C, T, H, W) float32 tensors, coarse to fine."""

    key: str
    label: str
    label_id: int
    split: str
    source_path: str
    fps: float
    source_fps: float
    frame_indices: list[int]
    levels: list[Tensor]
    source_height: int = 0
    source_width: int = 0


@dataclass
class ShardMeta:
    """Per-shard metadata (Parquet key-value metadata `dfm_video.shard`)."""

    num_samples: int
    factors: list[list[int]]
    temporal_mode: str
    level_shapes: list[list[int]]  # (C, T, H, W) per level, coarse to fine
    autoencoder: dict[str, Any]  # `Autoencoder.describe()` + "path"
    moments: dict[str, list]  # `LevelMoments.to_dict()` of this shard's levels
    latent_dtype: str = "float32"
    # `LevelMoments.to_dict()` (one level) of the whole latent (the levels recomposed): what a
    # trainer that re-decomposes the shards into a single level (flow matching) standardises with
    latent_moments: Optional[dict[str, list]] = None
    schema_version: int = SCHEMA_VERSION

    @property
    def num_levels(self) -> int:
        return len(self.level_shapes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str | Path = "<shard>") -> "ShardMeta":
        data = json.loads(text)
        check_version(data.get("schema_version"), where)
        return cls(**data)

    def level_moments(self) -> LevelMoments:
        return LevelMoments.from_dict(self.moments)

    def whole_latent_moments(self) -> Optional[LevelMoments]:
        return LevelMoments.from_dict(self.latent_moments) if self.latent_moments else None


def storage_round(x: Tensor, dtype: str) -> Tensor:
    """`x` as stored in a shard of `dtype`, back in float32 (what statistics must see)."""
    return x.detach().cpu().to(getattr(torch, dtype)).to(torch.float32)


def _level_bytes(x: Tensor, dtype: str = "float32") -> bytes:
    if dtype not in STORAGE:
        raise ValueError(f"latent dtype '{dtype}' is not one of {sorted(STORAGE)}")
    t = x.detach().cpu().to(getattr(torch, dtype)).contiguous()
    if dtype == "bfloat16":
        t = t.view(torch.int16)
    return np.ascontiguousarray(t.numpy(), dtype=STORAGE[dtype]).tobytes()


def decode_level(buf: bytes, shape: Sequence[int], dtype: str = "float32") -> Tensor:
    """Raw level bytes of a shard -> a writable float32 (C, T, H, W) tensor."""
    if dtype not in STORAGE:
        raise ValueError(f"shard latent dtype '{dtype}' is unknown to this code (knows {sorted(STORAGE)})")
    arr = np.frombuffer(buf, dtype=STORAGE[dtype]).reshape(shape)
    if dtype == "bfloat16":
        return torch.from_numpy(arr.astype(np.int16)).view(torch.bfloat16).to(torch.float32)  # astype: native order
    return torch.from_numpy(arr.astype(np.float32))  # astype copies: writable, native order


def samples_to_table(samples: Sequence[Sample], meta: ShardMeta) -> pa.Table:
    """Arrow table of `samples` in the shard schema, with `meta` attached."""
    n_levels = meta.num_levels
    columns: dict[str, list] = {f.name: [] for f in shard_schema(n_levels)}
    for smp in samples:
        if len(smp.levels) != n_levels:
            raise ValueError(f"sample '{smp.key}' has {len(smp.levels)} levels, the shard has {n_levels}")
        for f in CLIP_FIELDS:
            columns[f.name].append(getattr(smp, f.name))
        for s, x in enumerate(smp.levels):
            if list(x.shape) != list(meta.level_shapes[s]):
                raise ValueError(
                    f"sample '{smp.key}' level {s} has shape {list(x.shape)}, the shard expects {meta.level_shapes[s]}"
                )
            columns[level_column(s)].append(_level_bytes(x, meta.latent_dtype))
            columns[level_shape_column(s)].append(list(x.shape))
    schema = shard_schema(n_levels).with_metadata({META_KEY: meta.to_json().encode()})
    return pa.table(columns, schema=schema)


def _fsync_replace(tmp: Path, final: Path) -> None:
    # fsync before rename: the new name must never point at a file whose bytes are not on disk.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def tmp_path_for(final: Path) -> Path:
    return final.with_name(f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex[:8]}")


def write_table_atomic(
    table: pa.Table, path: str | Path, uncompressed: Sequence[str] = (), row_group_size: int = 16
) -> Path:
    """Write a Parquet file under a temporary name, then rename: readers see all of it or nothing."""
    final = Path(path)
    tmp = tmp_path_for(final)
    compression = {name: ("none" if name in uncompressed else "zstd") for name in table.column_names}
    try:
        pq.write_table(table, tmp, compression=compression, row_group_size=row_group_size)
        _fsync_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_shard(path: str | Path, samples: Sequence[Sample], meta: ShardMeta) -> Path:
    """Atomically write one shard (temporary file + fsync + rename)."""
    table = samples_to_table(samples, meta)
    # One clip per row group: a random training read fetches exactly one clip's bytes.
    return write_table_atomic(
        table, path, uncompressed=[level_column(s) for s in range(meta.num_levels)], row_group_size=1
    )


def write_json_atomic(path: str | Path, data: Any) -> Path:
    final = Path(path)
    tmp = tmp_path_for(final)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        _fsync_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_shard_meta(path: str | Path) -> ShardMeta:
    """The shard's `ShardMeta` (reads only the Parquet footer); `ValueError` on a foreign/old file."""
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise ValueError(f"{path}: not a dfm-video shard (no '{META_KEY.decode()}' metadata)")
    return ShardMeta.from_json(md[META_KEY], path)


def _rows_to_samples(table: pa.Table, n_levels: int, dtype: str = "float32") -> Iterator[Sample]:
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    for name, default in OPTIONAL_DEFAULTS.items():
        cols.setdefault(name, [default] * table.num_rows)
    for i in range(table.num_rows):
        levels = [
            decode_level(cols[level_column(s)][i], cols[level_shape_column(s)][i], dtype) for s in range(n_levels)
        ]
        yield Sample(**{f.name: cols[f.name][i] for f in CLIP_FIELDS}, levels=levels)


def iter_samples(path: str | Path) -> Iterator[Sample]:
    """Samples of one shard, one row group in memory at a time."""
    meta = read_shard_meta(path)
    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        yield from _rows_to_samples(pf.read_row_group(g), meta.num_levels, meta.latent_dtype)


def read_shard(path: str | Path) -> list[Sample]:
    """All samples of one shard."""
    return list(iter_samples(path))


def read_keys(path: str | Path) -> list[str]:
    """The clip keys of one shard (reads only the key column)."""
    return pq.read_table(path, columns=["key"]).column("key").to_pylist()


def is_final_shard(path: Path) -> bool:
    return path.name.startswith(SHARD_PREFIX) and path.name.endswith(SHARD_SUFFIX)


def list_shards(root: str | Path) -> list[Path]:
    """Complete shards of a dataset directory, sorted by name (temporary files are never listed)."""
    folder = Path(root) / SHARD_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_final_shard(p))


def read_rejects(root: str | Path) -> pa.Table:
    """All reject records of a dataset, read from the per-batch parts (complete even after a crash)."""
    root = Path(root)
    parts = sorted((root / REJECTS_DIR).glob(f"*{SHARD_SUFFIX}")) if (root / REJECTS_DIR).is_dir() else []
    parts = [p for p in parts if not p.name.startswith(TMP_PREFIX)]
    if not parts:
        return REJECT_SCHEMA.empty_table()
    return pa.concat_tables([read_rejects_part(p) for p in parts])


def read_rejects_part(path: str | Path) -> pa.Table:
    """One rejects part in REJECT_SCHEMA (parts written before `run_id` existed get run_id "")."""
    table = pq.read_table(path)
    for f in REJECT_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.array([""] * table.num_rows, f.type))
    return table.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} is missing: is '{path.parent}' a finished data_pipeline.preprocess output?")
    data = json.loads(path.read_text())
    check_version(data.get("schema_version"), path)
    return data


@dataclass
class DatasetInfo:
    """Dataset-level facts a trainer needs: labels, statistics, shards, codec, pyramid."""

    root: Path
    labels: list[str]
    moments: LevelMoments
    manifest: dict[str, Any]
    shards: list[Path] = field(default_factory=list)
    latent_moments: Optional[LevelMoments] = None  # of the whole latent (one level), if recorded

    @classmethod
    def load(cls, root: str | Path) -> "DatasetInfo":
        """Read and version-check labels.json, stats.json and manifest.json of `root`."""
        root = Path(root)
        labels = read_json(root / LABELS_FILE)["labels"]
        stats = read_json(root / STATS_FILE)
        manifest = read_json(root / MANIFEST_FILE)
        shards = list_shards(root)
        listed = sorted(s["name"] for s in manifest["shards"])
        if sorted(p.name for p in shards) != listed:
            raise ValueError(
                f"{root}: the shards on disk differ from {MANIFEST_FILE} "
                f"({len(shards)} vs {len(listed)}): re-run data_pipeline.preprocess to finish it"
            )
        latent = LevelMoments.from_dict(stats["latent_moments"]) if stats.get("latent_moments") else None
        return cls(root, list(labels), LevelMoments.from_dict(stats["moments"]), manifest, shards, latent)

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def level_shapes(self) -> list[list[int]]:
        return self.manifest["level_shapes"]

    @property
    def factors(self) -> list[list[int]]:
        return self.manifest["factors"]

    @property
    def temporal_mode(self) -> str:
        return self.manifest["temporal_mode"]

    @property
    def autoencoder(self) -> dict[str, Any]:
        """Codec record: id, kind, path, latent_channels, temporal, spatial, causal, scaling."""
        return self.manifest["autoencoder"]

    def stats(self) -> LevelStats:
        """Per-level, per-channel mean/std for `dfm_video.dfm.standardize`."""
        return self.moments.stats()
