"""The on-disk dataset's ONE home: what workers, the preprocessing driver and the trainer share.

Format (columns, metadata, file names) is `dfm_video.data.schema`; this module is the life cycle:
- workers (whoever holds the latents: encoder actors or fused per-GPU actors) call
  `write_clips(root, samples, rejects, ...)`: one shard + one rejects part, each written under a
  temporary name and renamed into place, named by a hash of their clip keys (a retried batch
  overwrites its own file instead of adding a second copy); it returns only the shard's name and
  moments, never latents;
- the driver opens a `DatasetStore` (lock against a concurrent run, temporary leftovers of a killed
  run deleted, settings checked against the existing dataset), asks it which keys are done, and
  at the end `finalize`s stats.json / rejects.parquet / manifest.json by merging per-shard moments
  read from the shard footers;
- the trainer reads through `schema.DatasetInfo` (which checks the manifest against the shards).

Crash safety: what is done = the keys inside the final shards + the keys of the rejects parts
(stage decode/encode). A SIGKILL at any moment leaves only complete files under final names, so a
rerun skips exactly the finished clips. Statistics are merges of every shard's own moments (float64),
so they stay exact however many runs produced the shards.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import yaml

from dfm_video.config.loader import config_to_dict, save_config
from dfm_video.config.schema import Config
from dfm_video.data import schema as S
from dfm_video.dfm.pyramid import recompose
from dfm_video.dfm.standardize import LevelMoments
from dfm_video.dir_lock import DirLock, LockHeld, describe

SOURCE_REJECTS = "part-source.parquet"  # rewritten by every run from its input listing
log = logging.getLogger(__name__)
LOCK_FILE = ".lock"

# Config values that change what a shard contains: a rerun into the same directory must match.
CONTENT_KEYS = (
    "preprocess.input_type",
    "preprocess.split",
    "preprocess.num_frames",
    "preprocess.fps",
    "preprocess.resolution",
    "preprocess.autoencoder",
    "preprocess.pixel_patch",
    "preprocess.autoencoder_dtype",
    "dfm.factors",
    "dfm.temporal_mode",
)


@dataclass(frozen=True)
class Reject:
    """A clip that failed a stage; `stage` is source | decode | encode, `reason` a short category."""

    key: str
    path: str
    stage: str
    reason: str
    detail: str
    run_id: str = ""  # the run that made this record


def batch_name(prefix: str, keys: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return f"{prefix}{digest}{S.SHARD_SUFFIX}"


def write_rejects(path: Path, rejects: Sequence[Reject]) -> Path:
    cols = {f.name: [getattr(r, f.name) for r in rejects] for f in S.REJECT_SCHEMA}
    return S.write_table_atomic(pa.table(cols, schema=S.REJECT_SCHEMA), path)


@dataclass(frozen=True)
class ShardLayout:
    """What every shard of one dataset shares (the `ShardMeta` fields except counts and moments)."""

    factors: list[list[int]]
    temporal_mode: str
    level_shapes: list[list[int]]
    autoencoder: dict[str, Any]
    latent_dtype: str = "float32"


def write_clips(root: str | Path, samples: Sequence[S.Sample], rejects: Sequence[Reject], layout: ShardLayout) -> str:
    """Worker side: `samples` -> one shard (moments of the values AS STORED, float64), `rejects` ->
    one rejects part; both atomic and content-keyed. Returns the shard's file name ("" if none)."""
    root = Path(root)
    shard = ""
    if samples:
        num_levels, channels = len(layout.level_shapes), layout.level_shapes[0][0]
        moments, latent = LevelMoments(num_levels, channels), LevelMoments(1, channels)
        for smp in samples:
            smp.levels = [S.storage_round(x, layout.latent_dtype) for x in smp.levels]
            moments.update(smp.levels)
            latent.update([recompose([x[None] for x in smp.levels], layout.factors, layout.temporal_mode)])
        meta = S.ShardMeta(
            len(samples),
            layout.factors,
            layout.temporal_mode,
            layout.level_shapes,
            layout.autoencoder,
            moments.to_dict(),
            latent_dtype=layout.latent_dtype,
            latent_moments=latent.to_dict(),
        )
        shard = batch_name(S.SHARD_PREFIX, [s.key for s in samples])
        S.write_shard(root / S.SHARD_DIR / shard, samples, meta)
    if rejects:
        write_rejects(root / S.REJECTS_DIR / batch_name("part-", [r.key for r in rejects]), rejects)
    return shard


class DatasetStore:
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
        self._lock = DirLock(self.root / LOCK_FILE)
        try:
            stale = self._lock.acquire()
        except LockHeld as exc:
            raise ValueError(
                f"preprocess.output_dir '{path}' is in use by another preprocess run: {describe(exc.holder)} "
                f"(lock {exc.path}); wait for it or stop it"
            ) from exc
        if stale:
            log.warning("preprocess.output_dir '%s': took over the lock of a run that died (%s)", path, describe(stale))
        # Leftovers of a killed run: incomplete by construction, never listed, safe to delete.
        for sub in (self.root / S.SHARD_DIR, self.root / S.REJECTS_DIR, self.root):
            for p in sub.glob(f"{S.TMP_PREFIX}*"):
                p.unlink(missing_ok=True)

    def close(self) -> None:
        self._lock.release()

    def check_compatible(self, cfg: Config, labels: list[str], autoencoder: dict[str, Any]) -> None:
        """Refuse to add shards made with different content settings, labels or codec."""
        old_cfg = self.root / S.CONFIG_FILE
        if old_cfg.is_file():
            old, new = yaml.safe_load(old_cfg.read_text()), config_to_dict(cfg)
            for key in CONTENT_KEYS:
                a, b = _dotted(old, key), _dotted(new, key)
                if a != b:
                    raise ValueError(
                        f"preprocess.output_dir '{self.root}' holds shards "
                        f"made with {key}={a}, this run has {key}={b}: "
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
                raise ValueError(
                    f"{shards[0]}: encoded with autoencoder '{old_id}', this run uses '{autoencoder['id']}'"
                )

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
            table = S.read_rejects_part(part)
            keep = [k not in keys for k in table.column("key").to_pylist()]
            if all(keep):
                continue
            if any(keep):
                S.write_table_atomic(table.filter(pa.array(keep)), part)
            else:
                part.unlink()

    def finalize(
        self,
        run: dict[str, Any],
        level_shapes: list[list[int]],
        factors: list[list[int]],
        temporal_mode: str,
        autoencoder: dict[str, Any],
        ignored: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Rebuild stats.json, rejects.parquet and manifest.json from what is on disk.

        `ignored`: files of the input folder that are not media (count per extension), listed so
        that nothing under the input is left out silently."""
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
        S.write_json_atomic(
            self.root / S.STATS_FILE,
            {
                "schema_version": S.SCHEMA_VERSION,
                "num_samples": num_samples,
                "moments": moments.to_dict(),
                "stats": stats,
                "latent_moments": latent.to_dict() if latent is not None and num_samples else None,
            },
        )
        rejects = S.read_rejects(self.root)
        S.write_table_atomic(rejects, self.root / S.REJECTS_FILE)
        old = self.root / S.MANIFEST_FILE
        runs = S.read_json(old).get("runs", []) if old.is_file() else []
        manifest = {
            "schema_version": S.SCHEMA_VERSION,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "num_samples": num_samples,
            "num_rejected": rejects.num_rows,
            "rejects_by_reason": dict(
                Counter(
                    f"{s}: {r}"
                    for s, r in zip(rejects.column("stage").to_pylist(), rejects.column("reason").to_pylist())
                )
            ),
            "ignored_files": dict(ignored or {}),
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


OutputDir = DatasetStore  # the name data_pipeline used before the dataset got its own module
