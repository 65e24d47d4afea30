"""Feature extraction over one set, sharded across ranks like sampling: the set's clips in global
batches [kB, (k+1)B), batch k on rank k mod W, features gathered on rank 0 in batch order.

A batch holds the same clips whatever the world size, so the gathered features (and every
statistic computed from them) equal a single process's exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dfm_video.eval.videos import ClipSpec, iter_items, select_videos
from dfm_video.sampling import Launch, global_batches

log = logging.getLogger("dfm_video.evaluate")


@dataclass
class FeatureExtractor:
    """One metric's network: clips in, one feature row per clip (FVD) or per frame (FID/FDD)."""

    name: str
    fn: Callable[[list[Tensor]], Tensor]
    """list of uint8 (T, H, W, 3) clips -> float (rows, D) features."""
    settings: dict = field(default_factory=dict)
    """What the report records about this metric."""


def set_items(path: str, num: Optional[int]) -> list:
    """The selected clips in processing order: dataset rows sorted by (shard, row) so that every rank
    reads each shard once, in order; files in draw order."""
    items = select_videos(path, num)
    if items and isinstance(items[0], tuple):
        items = sorted(items, key=lambda t: (Path(t[0]).name, t[1]))
    return items


def extract_features(
    path: str,
    num: int | None,
    num_frames: int,
    extractors: Sequence[FeatureExtractor],
    batch_size: int,
    *,
    spec: Optional[ClipSpec] = None,
    launch: Optional[Launch] = None,
    device: Optional[torch.device] = None,
) -> tuple[Optional[dict[str, np.ndarray]], int]:
    """Decode each selected video once and run every extractor on it, this rank's batches only.

    Returns ({metric: (rows, D) float32 features} on rank 0, None on the others; number of videos).
    """
    spec = spec or ClipSpec(num_frames)
    launch = launch or Launch(0, 1, 0)
    items = set_items(path, num)
    batches = global_batches(len(items), batch_size)
    mine = list(range(len(batches)))[launch.rank :: launch.world]
    stream = iter_items(path, [items[i] for k in mine for i in batches[k]], spec, device)
    feats: dict[int, dict[str, np.ndarray]] = {}
    t0 = time.time()
    for n, k in enumerate(mine, 1):
        clips = [next(stream) for _ in batches[k]]
        feats[k] = {e.name: e.fn(clips).float().numpy() for e in extractors}
        spent = time.time() - t0
        log.info(
            "%s: rank %d/%d, %d/%d batches (%.1f s, ETA %.0f s)",
            path,
            launch.rank,
            launch.world,
            n,
            len(mine),
            spent,
            spent / n * (len(mine) - n),
        )
    parts = launch.gather(feats)
    if parts is None:
        return None, len(items)
    merged = {k: v for part in parts for k, v in part.items()}
    assert sorted(merged) == list(range(len(batches))), "a rank's batches are missing"
    return {e.name: np.concatenate([merged[k][e.name] for k in range(len(batches))]) for e in extractors}, len(items)
