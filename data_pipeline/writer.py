"""Stage 3 (one Ray actor) and the dataset-level files (driver).

Crash safety: every shard and every rejects part is written under a temporary name and renamed
into place (`dfm_video.data.schema.write_shard`), so a SIGKILL at any moment leaves only complete
files under their final names. What is done = the keys inside the final shards + the keys of the
rejects parts (stage decode/encode). A rerun skips those before decoding; temporary leftovers are
deleted. Names are a hash of the batch's keys, so a batch Ray retries overwrites its own file
instead of adding a second copy. Dataset statistics are the merge of every shard's own moments,
so they stay exact however many runs produced the shards.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from data_pipeline.sources import Reject
from dfm_video.config.loader import config_to_dict, save_config
from dfm_video.config.schema import Config
from dfm_video.data import schema as S
from dfm_video.dfm.pyramid import recompose
from dfm_video.dfm.standardize import LevelMoments

SOURCE_REJECTS = "part-source.parquet"  # rewritten by every run from its input listing
LOCK_FILE = ".lock"

# Config values that change what a shard contains: a rerun into the same directory must match.
CONTENT_KEYS = (
    "preprocess.input_type", "preprocess.split", "preprocess.num_frames", "preprocess.fps",
    "preprocess.resolution", "preprocess.autoencoder", "preprocess.pixel_patch",
    "preprocess.autoencoder_dtype", "dfm.factors", "dfm.temporal_mode",
)


@dataclass(frozen=True)
class WriterSpec:
    output_dir: str
    factors: list[list[int]]
    temporal_mode: str
    level_shapes: list[list[int]]
    autoencoder: dict[str, Any]
    fps: float  # target fps of the sampled frames (stored as 0 for images)


def batch_name(prefix: str, keys: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return f"{prefix}{digest}{S.SHARD_SUFFIX}"


def write_rejects(path: Path, rejects: Sequence[Reject]) -> Path:
    cols = {f.name: [getattr(r, f.name) for r in rejects] for f in S.REJECT_SCHEMA}
    return S.write_table_atomic(pa.table(cols, schema=S.REJECT_SCHEMA), path)


def write_batch(spec: WriterSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Write one batch: accepted clips -> one shard, rejected ones -> one rejects part.

    Returns one summary row per clip (key, status, stage, reason, decoder, shard) for the driver.
    """
    root = Path(spec.output_dir)
    n = len(batch["key"])
    keys = [str(k) for k in batch["key"]]
    ok = [str(r) == "" for r in batch["reason"]]
    num_levels = len(spec.level_shapes)
    samples, rejects = [], []
    for i in range(n):
        if not ok[i]:
            rejects.append(Reject(keys[i], str(batch["path"][i]), str(batch["stage"][i]), str(batch["reason"][i]), str(batch["detail"][i])))
            continue
        fps = 0.0 if bool(batch["is_image"][i]) else spec.fps
        samples.append(S.Sample(
            key=keys[i], label=str(batch["label"][i]), label_id=int(batch["label_id"][i]), split=str(batch["split"][i]),
            source_path=str(batch["path"][i]), fps=fps, source_fps=float(batch["source_fps"][i]),
            frame_indices=[int(v) for v in batch["frame_indices"][i]],
            levels=[torch.from_numpy(np.array(batch[f"level_{s}"][i])) for s in range(num_levels)],  # copy: Ray's arrays are read-only
        ))
    shard = ""
    if samples:
        moments = LevelMoments(num_levels, spec.level_shapes[0][0])
        latent = LevelMoments(1, spec.level_shapes[0][0])
        for smp in samples:
            moments.update(smp.levels)
            latent.update([recompose([x[None] for x in smp.levels], spec.factors, spec.temporal_mode)])
        meta = S.ShardMeta(len(samples), spec.factors, spec.temporal_mode, spec.level_shapes, spec.autoencoder,
                           moments.to_dict(), latent_moments=latent.to_dict())
        shard = batch_name(S.SHARD_PREFIX, [s.key for s in samples])
        S.write_shard(root / S.SHARD_DIR / shard, samples, meta)
    if rejects:
        write_rejects(root / S.REJECTS_DIR / batch_name("part-", [r.key for r in rejects]), rejects)
    return {
        "key": np.array(keys, dtype=object),
        "status": np.array(["ok" if o else "rejected" for o in ok], dtype=object),
        "stage": np.array([str(s) for s in batch["stage"]], dtype=object),
        "reason": np.array([str(r) for r in batch["reason"]], dtype=object),
        "decoder": np.array([str(d) for d in batch["decoder"]], dtype=object),
        "shard": np.array([shard if o else "" for o in ok], dtype=object),
    }


class ShardWriter:
    """Ray actor wrapper of `write_batch` (one batch = one shard of <= samples_per_shard clips)."""

    def __init__(self, spec: WriterSpec) -> None:
        self.spec = spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return write_batch(self.spec, batch)


# ----------------------------------------------------------------------------- driver side


class OutputDir:
    """The output directory of one run: checked, locked against a concurrent run, cleaned of temp files."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        try:
            for sub in (S.SHARD_DIR, S.REJECTS_DIR):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{S.TMP_PREFIX}probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"preprocess.output_dir '{path}' is not writable: {exc}") from exc
        self._lock = open(self.root / LOCK_FILE, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise ValueError(f"preprocess.output_dir '{path}' is in use by another preprocess run (lock {LOCK_FILE})") from exc
        # Leftovers of a killed run: incomplete by construction, never listed, safe to delete.
        for sub in (self.root / S.SHARD_DIR, self.root / S.REJECTS_DIR, self.root):
            for p in sub.glob(f"{S.TMP_PREFIX}*"):
                p.unlink(missing_ok=True)

    def close(self) -> None:
        self._lock.close()

    def check_compatible(self, cfg: Config, labels: list[str], autoencoder: dict[str, Any]) -> None:
        """Refuse to add shards made with different content settings, labels or codec."""
        old_cfg = self.root / S.CONFIG_FILE
        if old_cfg.is_file():
            old, new = yaml.safe_load(old_cfg.read_text()), config_to_dict(cfg)
            for key in CONTENT_KEYS:
                a, b = _dotted(old, key), _dotted(new, key)
                if a != b:
                    raise ValueError(
                        f"preprocess.output_dir '{self.root}' holds shards made with {key}={a}, this run has {key}={b}: "
                        f"use another output directory (or the same settings)"
                    )
        old_labels = self.root / S.LABELS_FILE
        if old_labels.is_file():
            found = S.read_json(old_labels)["labels"]
            if found != labels:
                raise ValueError(
                    f"{old_labels}: the existing labels ({len(found)}) differ from this run's ({len(labels)}); "
                    f"label ids would change: use the same preprocess.labels_file or another output directory"
                )
        shards = S.list_shards(self.root)
        if shards:
            old_id = S.read_shard_meta(shards[0]).autoencoder["id"]
            if old_id != autoencoder["id"]:
                raise ValueError(f"{shards[0]}: encoded with autoencoder '{old_id}', this run uses '{autoencoder['id']}'")

    def write_run_files(self, cfg: Config, labels: list[str], source_rejects: Sequence[Reject]) -> None:
        save_config(cfg, self.root / S.CONFIG_FILE)
        S.write_json_atomic(self.root / S.LABELS_FILE, {"schema_version": S.SCHEMA_VERSION, "labels": labels})
        part = self.root / S.REJECTS_DIR / SOURCE_REJECTS
        if source_rejects:
            write_rejects(part, source_rejects)
        else:
            part.unlink(missing_ok=True)

    def done_keys(self, retry_rejects: bool) -> set[str]:
        """Keys already in a complete shard, plus (unless retrying) keys a stage rejected."""
        done: set[str] = set()
        for shard in S.list_shards(self.root):
            done.update(S.read_keys(shard))
        if not retry_rejects:
            rejects = S.read_rejects(self.root)
            for key, stage in zip(rejects.column("key").to_pylist(), rejects.column("stage").to_pylist()):
                if stage != "source":  # a duplicate's key belongs to the clip that IS processed
                    done.add(key)
        return done

    def drop_rejects(self, keys: set[str]) -> None:
        """Forget earlier rejects of `keys` (they are being retried); parts are rewritten atomically."""
        for part in sorted((self.root / S.REJECTS_DIR).glob(f"part-*{S.SHARD_SUFFIX}")):
            if part.name == SOURCE_REJECTS:
                continue
            table = pq.read_table(part, schema=S.REJECT_SCHEMA)
            keep = [k not in keys for k in table.column("key").to_pylist()]
            if all(keep):
                continue
            if any(keep):
                S.write_table_atomic(table.filter(pa.array(keep)), part)
            else:
                part.unlink()

    def finalize(self, run: dict[str, Any], level_shapes: list[list[int]], factors: list[list[int]],
                 temporal_mode: str, autoencoder: dict[str, Any]) -> dict[str, Any]:
        """Rebuild stats.json, rejects.parquet and manifest.json from what is on disk."""
        shards = S.list_shards(self.root)
        moments = LevelMoments(len(level_shapes), level_shapes[0][0])
        latent: LevelMoments | None = LevelMoments(1, level_shapes[0][0])
        entries, seen, dupes = [], set(), set()
        for shard in shards:
            meta = S.read_shard_meta(shard)
            moments.merge(meta.level_moments())
            shard_latent = meta.whole_latent_moments()
            latent = latent.merge(shard_latent) if latent is not None and shard_latent is not None else None
            entries.append({"name": shard.name, "num_samples": meta.num_samples})
            keys = S.read_keys(shard)
            dupes.update(seen.intersection(keys))
            seen.update(keys)
        if dupes:  # internal invariant: names are key hashes and done keys are skipped
            raise RuntimeError(f"{self.root}: {len(dupes)} clip key(s) appear in two shards, e.g. {sorted(dupes)[:3]}")
        num_samples = len(seen)
        stats = moments.stats().to_dict() if num_samples else None
        S.write_json_atomic(self.root / S.STATS_FILE, {
            "schema_version": S.SCHEMA_VERSION, "num_samples": num_samples, "moments": moments.to_dict(), "stats": stats,
            "latent_moments": latent.to_dict() if latent is not None and num_samples else None,
        })
        rejects = S.read_rejects(self.root)
        S.write_table_atomic(rejects, self.root / S.REJECTS_FILE)
        old = self.root / S.MANIFEST_FILE
        runs = S.read_json(old).get("runs", []) if old.is_file() else []
        manifest = {
            "schema_version": S.SCHEMA_VERSION,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_samples": num_samples,
            "num_rejected": rejects.num_rows,
            "rejects_by_reason": dict(Counter(f"{s}: {r}" for s, r in zip(rejects.column("stage").to_pylist(), rejects.column("reason").to_pylist()))),
            "num_shards": len(shards),
            "shards": entries,
            "level_shapes": level_shapes,
            "factors": factors,
            "temporal_mode": temporal_mode,
            "autoencoder": autoencoder,
            "runs": runs + [run],
        }
        S.write_json_atomic(old, manifest)
        return manifest


def _dotted(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data
