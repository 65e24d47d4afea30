"""The on-disk dataset's ONE home: what workers, the preprocessing driver and the trainer share.

Format (columns, metadata, file names) is `dfm_video.data.schema`; this module is the life cycle:
- workers (whoever holds the latents: encoder actors or fused per-GPU actors) call
  `write_clips(root, samples, rejects, ...)`: one shard + one rejects part, each written under a
  temporary name and renamed into place, named by a hash of their clip keys (a retried batch
  that accepts the same clips overwrites its own file; one that accepts another set leaves a second
  copy of the common clips, which `finalize` resolves: `resolve_retry_duplicates`); it returns only
  the shard's name and moments, never latents;
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
import torch
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
log = logging.getLogger(__name__)

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


def write_clips(
    root: str | Path,
    samples: Sequence[S.Sample],
    rejects: Sequence[Reject],
    layout: ShardLayout,
    clip_moments: Sequence[Any] | None = None,
) -> str:
    """Worker side: `samples` -> one shard (moments of the values AS STORED, float64), `rejects` ->
    one rejects part; both atomic and content-keyed. Returns the shard's file name ("" if none).

    `clip_moments[i]`, when given, holds sample i's moments already taken where it was encoded
    (`data_pipeline.encode`: (S + 1, 2, C) float64, (mean, m2) per level of the stored values, then
    of the recomposed latent); they are merged in sample order instead of being recomputed here."""
    root = Path(root)
    shard = ""
    if clip_moments is not None and len(clip_moments) != len(samples):
        raise ValueError(f"write_clips: {len(clip_moments)} clip moments for {len(samples)} samples")
    if samples:
        num_levels, channels = len(layout.level_shapes), layout.level_shapes[0][0]
        moments, latent = LevelMoments(num_levels, channels), LevelMoments(1, channels)
        for i, smp in enumerate(samples):
            smp.levels = [S.storage_round(x, layout.latent_dtype) for x in smp.levels]
            if clip_moments is None:
                moments.update(smp.levels)
                latent.update([recompose([x[None] for x in smp.levels], layout.factors, layout.temporal_mode)])
                continue
            m = torch.as_tensor(clip_moments[i], dtype=torch.float64)
            if tuple(m.shape) != (num_levels + 1, 2, channels):
                raise ValueError(
                    f"write_clips: moments of {smp.key} are {tuple(m.shape)}, want {(num_levels + 1, 2, channels)}"
                )
            for s, x in enumerate(smp.levels):
                moments.add(s, x[0].numel(), m[s, 0], m[s, 1])
            full = layout.level_shapes[-1]
            latent.add(0, full[1] * full[2] * full[3], m[num_levels, 0], m[num_levels, 1])
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

    def resolve_retry_duplicates(self) -> dict[str, int]:
        """Give every clip key exactly one shard, and drop rejects of keys that a shard holds.

        Ray retries a writer call whose actor died (and restarts the actor); the retry may accept
        another set of clips than the first attempt (a clip that timed out or hit an out-of-memory
        error the first time succeeds), so its content-keyed shard gets another name and both
        shards hold the common keys. Rule: the shard with more clips (the more complete write;
        equal counts: the smaller name) owns each key it holds. A shard that owns none of its keys
        is deleted; one that owns some is rewritten with only those (a new shard written atomically
        first, then the old one deleted: a crash in between leaves a state this rule resolves the
        same way). Every copy of a clip was encoded from the same frames with the same settings, so
        which one is kept does not change the dataset. Returns the counts recorded in the manifest."""
        counts = {"rows_dropped": 0, "shards_deleted": 0, "shards_rewritten": 0, "rejects_dropped": 0}
        shards = S.list_shards(self.root)
        keys = {p: S.read_keys(p) for p in shards}
        owner: dict[str, Path] = {}
        for p in sorted(shards, key=lambda p: (-len(keys[p]), p.name)):
            for k in keys[p]:
                owner.setdefault(k, p)
        losers = {p: [k for k in keys[p] if owner[k] != p] for p in shards}
        losers = {p: drop for p, drop in losers.items() if drop}
        # deletions first: a rewritten shard may take the name of one that is deleted
        for p, drop in sorted(losers.items()):
            if len(drop) == len(keys[p]):
                p.unlink()
                counts["shards_deleted"] += 1
                counts["rows_dropped"] += len(drop)
        for p, drop in sorted(losers.items()):
            if len(drop) == len(keys[p]):
                continue
            meta, gone = S.read_shard_meta(p), set(drop)
            layout = ShardLayout(
                meta.factors, meta.temporal_mode, meta.level_shapes, meta.autoencoder, meta.latent_dtype
            )
            kept = [smp for smp in S.iter_samples(p) if smp.key not in gone]
            if write_clips(self.root, kept, [], layout) != p.name:
                p.unlink()
            counts["shards_rewritten"] += 1
            counts["rows_dropped"] += len(drop)
        rejects = S.read_rejects(self.root)
        stale = {
            k
            for k, stage in zip(rejects.column("key").to_pylist(), rejects.column("stage").to_pylist())
            if stage != "source" and k in owner
        }
        if stale:
            counts["rejects_dropped"] = sum(
                1
                for k, stage in zip(rejects.column("key").to_pylist(), rejects.column("stage").to_pylist())
                if stage != "source" and k in stale
            )
            self.drop_rejects(stale)
        if any(counts.values()):
            log.warning(
                "%s: retried writer calls had left duplicate clips; kept one copy per key (%s)",
                self.root,
                ", ".join(f"{k} {v}" for k, v in counts.items()),
            )
        return counts

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
        retry = self.resolve_retry_duplicates()
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
        if dupes:  # resolve_retry_duplicates left one owner per key: a second copy is a bug here
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
        run = {**run, "retry_duplicates": retry}
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
            # clip copies that retried writer calls left, removed by finalize (totals over all runs)
            "retry_duplicates": {k: sum(r.get("retry_duplicates", {}).get(k, 0) for r in runs + [run]) for k in retry},
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
