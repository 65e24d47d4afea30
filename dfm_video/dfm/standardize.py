"""Per-level, per-channel standardisation of pyramid levels with dataset statistics.

The paper scales every level to unit std for video (off for images): the residual levels are
much smaller than the coarse one, and equal scales give every stage a comparable signal-to-noise
ratio at the same t. Statistics are gathered during preprocessing with `LevelMoments` (exact,
mergeable across workers in float64) and stored beside the shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class LevelStats:
    """Per-level, per-channel mean and std: both (S, C) float64 tensors."""

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.dim() != 2:
            raise ValueError(
                f"LevelStats wants mean and std of one (S, C) shape, got {self.mean.shape} / {self.std.shape}"
            )
        if not bool((self.std > 0).all()):
            raise ValueError("LevelStats: every std must be > 0 (a constant channel cannot be standardised)")

    @property
    def num_levels(self) -> int:
        return self.mean.shape[0]

    def to_dict(self) -> dict[str, list[list[float]]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[Sequence[float]]]) -> "LevelStats":
        return cls(torch.tensor(data["mean"], dtype=torch.float64), torch.tensor(data["std"], dtype=torch.float64))

    @classmethod
    def identity(cls, num_levels: int, channels: int) -> "LevelStats":
        z = torch.zeros(num_levels, channels, dtype=torch.float64)
        return cls(z, torch.ones_like(z))


def _broadcast(v: Tensor, like: Tensor) -> Tensor:
    # (C,) -> (1, C, 1, 1, 1) in the level's dtype and device
    return v.to(device=like.device, dtype=like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def _check(levels: Sequence[Tensor], stats: LevelStats) -> None:
    if len(levels) != stats.num_levels:
        raise ValueError(f"standardisation statistics have {stats.num_levels} levels, the pyramid has {len(levels)}")
    for s, x in enumerate(levels):
        if x.shape[1] != stats.mean.shape[1]:
            raise ValueError(f"level {s + 1} has {x.shape[1]} channels, statistics have {stats.mean.shape[1]}")


def standardize(levels: Sequence[Tensor], stats: LevelStats) -> list[Tensor]:
    """(x_s - mean_s) / std_s per channel for every level (B, C, T, H, W)."""
    _check(levels, stats)
    return [(x - _broadcast(stats.mean[s], x)) / _broadcast(stats.std[s], x) for s, x in enumerate(levels)]


def destandardize(levels: Sequence[Tensor], stats: LevelStats) -> list[Tensor]:
    """Inverse of `standardize`: x_s * std_s + mean_s."""
    _check(levels, stats)
    return [x * _broadcast(stats.std[s], x) + _broadcast(stats.mean[s], x) for s, x in enumerate(levels)]


def clip_moments(x: Tensor) -> tuple[float, Tensor, Tensor]:
    """Per-clip, per-channel moments of a batch (B, C, ...) in float64 on `x`'s device.

    Returns (values per channel of one clip, mean (B, C), m2 (B, C)): what `LevelMoments.add` merges.
    Two passes (mean, then the squared deviations from it), as `LevelMoments.update` does."""
    flat = x.detach().to(torch.float64).reshape(x.shape[0], x.shape[1], -1)  # (B, C, N)
    mean = flat.mean(dim=2)
    m2 = (flat - mean[..., None]).square_().sum(dim=2)
    return float(flat.shape[2]), mean, m2


class LevelMoments:
    """Running per-level, per-channel count / mean / M2 (Chan et al.), mergeable across workers.

    Kept in float64 so that millions of clips accumulate without drift.
    """

    def __init__(self, num_levels: int, channels: int) -> None:
        self.count = torch.zeros(num_levels, dtype=torch.float64)
        self.mean = torch.zeros(num_levels, channels, dtype=torch.float64)
        self.m2 = torch.zeros(num_levels, channels, dtype=torch.float64)

    def update(self, levels: Sequence[Tensor]) -> None:
        """Add a batch of levels, each (B, C, T, H, W) (or (C, T, H, W) for one clip)."""
        if len(levels) != self.count.shape[0]:
            raise ValueError(f"expected {self.count.shape[0]} levels, got {len(levels)}")
        for s, x in enumerate(levels):
            x = x.detach()
            if x.dim() == 4:
                x = x.unsqueeze(0)
            n, mean, m2 = clip_moments(x.transpose(0, 1).unsqueeze(0))  # the whole batch as one group
            self._merge_level(s, n, mean[0], m2[0])

    def add(self, s: int, count: float, mean: Tensor, m2: Tensor) -> None:
        """Merge moments gathered elsewhere (e.g. `clip_moments` on a GPU) into level `s`: `count`
        values per channel with per-channel `mean` and `m2` (C,)."""
        self._merge_level(s, float(count), mean.detach().to("cpu", torch.float64), m2.detach().to("cpu", torch.float64))

    def _merge_level(self, s: int, n: float, mean: Tensor, m2: Tensor) -> None:
        na = float(self.count[s])
        tot = na + n
        if tot == 0:
            return
        delta = mean - self.mean[s]
        self.mean[s] = self.mean[s] + delta * (n / tot)
        self.m2[s] = self.m2[s] + m2 + delta**2 * (na * n / tot)
        self.count[s] = tot

    def merge(self, other: "LevelMoments") -> "LevelMoments":
        """Fold another accumulator (e.g. another worker's) into this one; returns self."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(f"cannot merge moments of shape {other.mean.shape} into {self.mean.shape}")
        for s in range(self.count.shape[0]):
            self._merge_level(s, float(other.count[s]), other.mean[s], other.m2[s])
        return self

    def stats(self, min_std: float = 1e-6) -> LevelStats:
        """Population mean/std; std floored at `min_std` so a constant channel stays invertible."""
        if bool((self.count == 0).any()):
            raise ValueError("no samples were accumulated for at least one level")
        var = self.m2 / self.count[:, None]
        return LevelStats(self.mean.clone(), var.sqrt().clamp_min(min_std))

    def to_dict(self) -> dict[str, list]:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> "LevelMoments":
        mean = torch.tensor(data["mean"], dtype=torch.float64)
        out = cls(mean.shape[0], mean.shape[1])
        out.count = torch.tensor(data["count"], dtype=torch.float64)
        out.mean = mean
        out.m2 = torch.tensor(data["m2"], dtype=torch.float64)
        return out
