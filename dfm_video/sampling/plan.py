"""Which sample gets which label, noise and rank: a pure function of (num_samples, seed, labels).

Global index i in [0, N) names sample i everywhere: its label, its noise generator (seeded from
(seed, i)) and its file name. Samples are grouped in global batches [kB, (k+1)B) and batch k
runs on rank k mod W, so a batch holds the same samples whatever the world size: the set of files
is the same for any W, and bit-identical when the kernels are batch-size invariant (fp32 on CPU;
see docs/evaluation.md for bf16 on GPUs).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

log = logging.getLogger("dfm_video.sample")


def balanced_labels(num: int, num_classes: int) -> list[int]:
    """Class i % K for sample i: every class gets floor(N/K) or ceil(N/K) samples, the first ones first.

    A count that does not divide evenly, or fewer samples than classes, is logged, never hidden.
    """
    if num_classes < 1:
        raise ValueError("class-balanced labels need at least one class")
    if num < num_classes:
        log.warning("--num-samples %d < %d classes: only classes 0..%d get a sample", num, num_classes, num - 1)
    elif num % num_classes:
        log.warning(
            "--num-samples %d is not a multiple of %d classes: classes 0..%d get %d samples, the others %d",
            num,
            num_classes,
            num % num_classes - 1,
            num // num_classes + 1,
            num // num_classes,
        )
    return [i % num_classes for i in range(num)]


def labels_from_file(path: str | Path, names: Sequence[str], num_classes: int, num: int) -> list[int]:
    """Line i of `path` is sample i's label: a label name or a class id (blank lines and # comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--labels-file {path}: no such file")
    out: list[int] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in names:
            out.append(names.index(line))
        elif line.isdigit() and int(line) < num_classes:
            out.append(int(line))
        else:
            raise ValueError(
                f"--labels-file {path}:{lineno}: {line!r} is neither "
                f"a label of this model nor a class id < {num_classes}"
            )
    if len(out) < num:
        raise ValueError(
            f"--labels-file {path}: {len(out)} labels but --num-samples {num}: the requested samples are not reachable"
        )
    return out[:num]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed for sample `index` (hashed: neighbouring seeds share no noise)."""
    digest = hashlib.sha256(f"dfm-video-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_noise(seed: int, indices: Sequence[int], channels: int, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Per-level noise (B, C, *shape) on the CPU; row b depends only on (seed, indices[b])."""
    per_sample = []
    for i in indices:
        g = torch.Generator().manual_seed(sample_seed(seed, i))
        per_sample.append([torch.randn(channels, *s, generator=g) for s in shapes])
    return [torch.stack([levels[k] for levels in per_sample]) for k in range(len(shapes))]


def global_batches(num: int, batch_size: int) -> list[list[int]]:
    """[[0..B-1], [B..2B-1], ...] covering range(num)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    return [list(range(s, min(s + batch_size, num))) for s in range(0, num, batch_size)]


def rank_batches(num: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches: global batch k goes to rank k mod world (disjoint, covering, balanced)."""
    return global_batches(num, batch_size)[rank::world]


def check_count(num: Optional[int]) -> int:
    if num is None or num < 1:
        raise ValueError(f"--num-samples must be >= 1, got {num}")
    return num
