"""Worker side of shard writing: a Ray Data batch of encoded clips -> `dfm_video.data.store.write_clips`.

Called inside the actors that hold the latents (encoder actors, or the fused per-GPU actors):
no latent leaves the worker except into its own shard file; what goes back to the driver is one
small summary row per clip (key, status, stage, reason, decoder, shard).

Retries: Ray Data restarts a writer actor that died and retries its call; when the retry accepts
another set of clips than the first attempt, both shards stay and the driver's `finalize` keeps
one copy of each clip (`DatasetStore.resolve_retry_duplicates`).
Fault hook (tests only): `faults.get("writer.die_after_write")` = {"name": a file's base name,
"marker": a path}: while `marker` does not exist, a batch holding that file rejects it as an
encode error, writes its shard and rejects part, creates `marker` and kills its own process (the
actor), as an out-of-memory kill right after a write would; the retry then accepts the clip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfm_video import faults
from dfm_video.data import schema as S
from dfm_video.data.store import DatasetStore, OutputDir, Reject, ShardLayout, batch_name, write_clips  # noqa: F401


@dataclass(frozen=True)
class WriterSpec:
    output_dir: str
    factors: list[list[int]]
    temporal_mode: str
    level_shapes: list[list[int]]
    autoencoder: dict[str, Any]
    fps: float  # target fps of the sampled frames (stored as 0 for images)
    latent_dtype: str = "float32"
    run_id: str = ""

    def layout(self) -> ShardLayout:
        return ShardLayout(self.factors, self.temporal_mode, self.level_shapes, self.autoencoder, self.latent_dtype)


def _col(batch: dict[str, Any], name: str, i: int, default: Any) -> Any:
    return batch[name][i] if name in batch else default


def write_batch(spec: WriterSpec, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Write one batch: accepted clips -> one shard, rejected ones -> one rejects part.

    Returns one summary row per clip (key, status, stage, reason, decoder, shard) for the driver.
    """
    n = len(batch["key"])
    keys = [str(k) for k in batch["key"]]
    die = _die_after_write(batch)
    ok = [str(r) == "" for r in batch["reason"]]
    num_levels = len(spec.level_shapes)
    samples, rejects = [], []
    for i in range(n):
        if not ok[i]:
            rejects.append(
                Reject(
                    keys[i],
                    str(batch["path"][i]),
                    str(batch["stage"][i]),
                    str(batch["reason"][i]),
                    str(batch["detail"][i]),
                    spec.run_id,
                )
            )
            continue
        fps = 0.0 if bool(batch["is_image"][i]) else spec.fps
        samples.append(
            S.Sample(
                key=keys[i],
                label=str(batch["label"][i]),
                label_id=int(batch["label_id"][i]),
                split=str(batch["split"][i]),
                source_path=str(batch["path"][i]),
                fps=fps,
                source_fps=float(batch["source_fps"][i]),
                frame_indices=[int(v) for v in batch["frame_indices"][i]],
                levels=[
                    torch.from_numpy(np.array(batch[f"level_{s}"][i])) for s in range(num_levels)
                ],  # copy: Ray's arrays are read-only
                source_height=int(_col(batch, "source_height", i, 0)),
                source_width=int(_col(batch, "source_width", i, 0)),
            )
        )
    # Moments taken on the encoder's device (the `moments` column of data_pipeline.encode) are merged as they are.
    moments = [batch["moments"][i] for i in range(n) if ok[i]] if "moments" in batch else None
    shard = write_clips(spec.output_dir, samples, rejects, spec.layout(), moments)
    if die is not None:
        Path(die).write_text("writer.die_after_write fired\n")
        os._exit(1)
    return {
        "key": np.array(keys, dtype=object),
        "status": np.array(["ok" if o else "rejected" for o in ok], dtype=object),
        "stage": np.array([str(s) for s in batch["stage"]], dtype=object),
        "reason": np.array([str(r) for r in batch["reason"]], dtype=object),
        "decoder": np.array([str(d) for d in batch["decoder"]], dtype=object),
        "shard": np.array([shard if o else "" for o in ok], dtype=object),
    }


def _die_after_write(batch: dict[str, Any]) -> str | None:
    """The `writer.die_after_write` fault (see the module docstring): marks the clip rejected in
    `batch` and returns the marker path, or None when the fault is off, spent or not for this batch."""
    fault = faults.get("writer.die_after_write")
    if not fault or Path(fault["marker"]).exists():
        return None
    names = [os.path.basename(str(p)) for p in batch["path"]]
    if fault["name"] not in names:
        return None
    i = names.index(fault["name"])
    batch["stage"] = np.array([str(s) for s in batch["stage"]], dtype=object)
    batch["reason"] = np.array([str(r) for r in batch["reason"]], dtype=object)
    batch["detail"] = np.array([str(d) for d in batch["detail"]], dtype=object)
    batch["stage"][i], batch["reason"][i] = "encode", "autoencoder error"
    batch["detail"][i] = f"{batch['path'][i]}: writer.die_after_write fault"
    return str(fault["marker"])
