"""Spatio-temporal Laplacian pyramid of latents: `decompose` and its exact inverse `recompose`.

Shapes: x is (B, C, T, H, W). Stages are numbered coarse to fine, 1..S; `factors[i] = (ft, fh, fw)`
is the resampling factor between stage i+1 and stage i+2 (each 1 or 2), so S = len(factors) + 1.

    X_1 = down(X, 1);   X_s = down(X, s) - up(down(X, s-1))   for s > 1
    recompose: Y_1 = X_1;  Y_s = up(Y_{s-1}) + X_s;  Y_S == X

Resampling (the authors' choice): factor-2 down = bilinear x1/2 with align_corners=False and no
antialias, which is exactly 2x2(x2) average pooling; up = (tri)linear x2 with align_corners=False.
Reconstruction is exact for ANY linear up/down pair because each level stores the residual
against the upsampled coarser level; only float rounding remains.

Odd latent T with a temporal factor 2 (ours). Causal video VAEs (CogVideoX, Wan) emit
T = 1 + (F-1)/4 latent frames whose first frame encodes one image alone. `temporal_mode="causal"`
keeps that frame apart at every level: down_t = [frame 0, avg-pool pairs of frames 1..T-1],
up_t = [frame 0, linear x2 of frames 1..]; so T must be 1 + 2k and the coarse level has 1 + k
frames (T = 1 stays 1: an image in a causal pyramid is untouched in time).
`temporal_mode="uniform"` pools all frames in pairs and needs an even T. No padding, ever:
shapes that do not fit raise a `ValueError` naming the level, axis, size and factor.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Factor = tuple[int, int, int]
TemporalMode = Literal["causal", "uniform"]


def _check_factors(factors: Sequence[Sequence[int]]) -> list[Factor]:
    out = []
    for i, f in enumerate(factors):
        f = tuple(int(v) for v in f)
        if len(f) != 3 or any(v not in (1, 2) for v in f):
            raise ValueError(f"factors[{i}] must be (ft, fh, fw) with each 1 or 2, got {f}")
        out.append(f)
    return out


def _coarser_shape(shape: Sequence[int], factor: Factor, mode: TemporalMode, what: str) -> tuple[int, int, int]:
    """Shape one level coarser; `what` names the step in error messages."""
    t, h, w = shape
    ft, fh, fw = factor
    if ft == 2:
        if mode == "causal":
            if (t - 1) % 2:
                raise ValueError(
                    f"{what}: T={t} with a temporal factor 2 in causal mode needs "
                    f"T = 1 + 2k (odd); use temporal_mode='uniform' for even T"
                )
            t = 1 + (t - 1) // 2
        else:
            if t % 2:
                raise ValueError(
                    f"{what}: T={t} with a temporal factor 2 in uniform mode needs an "
                    f"even T; causal-VAE latents (odd T) want temporal_mode='causal'"
                )
            t = t // 2
    for name, size, f in (("H", h, fh), ("W", w, fw)):
        if size % f:
            raise ValueError(f"{what}: {name}={size} is not divisible by its factor {f}")
    return t, h // fh, w // fw


def level_shapes(
    shape: Sequence[int], factors: Sequence[Sequence[int]], temporal_mode: TemporalMode = "causal"
) -> list[tuple[int, int, int]]:
    """(T, H, W) of every stage, coarse to fine, for a finest-level (T, H, W) `shape`.

    Raises `ValueError` when a level cannot be formed (no silent padding or cropping).
    """
    facs = _check_factors(factors)
    shapes = [tuple(int(v) for v in shape)]
    for i, f in enumerate(reversed(facs)):
        stage = len(facs) - i
        shapes.append(_coarser_shape(shapes[-1], f, temporal_mode, f"cannot form stage {stage} from stage {stage + 1}"))
    return shapes[::-1]


def _split_time(x: Tensor, ft: int, mode: TemporalMode) -> tuple[Tensor | None, Tensor]:
    """Separate the causal first frame (kept apart from temporal resampling) from the rest."""
    if ft == 2 and mode == "causal":
        return x[:, :, :1], x[:, :, 1:]
    return None, x


def downsample(x: Tensor, factor: Sequence[int], temporal_mode: TemporalMode = "causal") -> Tensor:
    """(B, C, T, H, W) -> coarser level by `factor`: average pooling (== bilinear x1/2, no antialias)."""
    ft, fh, fw = factor
    if (ft, fh, fw) == (1, 1, 1):
        return x
    _coarser_shape(x.shape[2:], (ft, fh, fw), temporal_mode, f"cannot downsample by {tuple(factor)}")
    first, rest = _split_time(x, ft, temporal_mode)
    parts = []
    if first is not None:
        parts.append(F.avg_pool3d(first, kernel_size=(1, fh, fw), stride=(1, fh, fw)) if fh * fw > 1 else first)
    if rest.shape[2] > 0:
        parts.append(F.avg_pool3d(rest, kernel_size=(ft, fh, fw), stride=(ft, fh, fw)))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def _interp(x: Tensor, scale: Sequence[int]) -> Tensor:
    if tuple(scale) == (1, 1, 1):
        return x
    # trilinear with a time scale of 1 is per-frame bilinear; align_corners=False as the authors.
    return F.interpolate(x, scale_factor=tuple(float(s) for s in scale), mode="trilinear", align_corners=False)


def upsample(x: Tensor, factor: Sequence[int], temporal_mode: TemporalMode = "causal") -> Tensor:
    """(B, C, T, H, W) -> finer level by `factor`: (tri)linear x2 interpolation, align_corners=False."""
    ft, fh, fw = factor
    first, rest = _split_time(x, ft, temporal_mode)
    parts = []
    if first is not None:
        parts.append(_interp(first, (1, fh, fw)))
    if rest.shape[2] > 0:
        parts.append(_interp(rest, (ft, fh, fw)))
    return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def decompose(x: Tensor, factors: Sequence[Sequence[int]], temporal_mode: TemporalMode = "causal") -> list[Tensor]:
    """Laplacian pyramid of x (B, C, T, H, W): a list of S levels, coarse to fine.

    Level s has shape (B, C, *level_shapes(...)[s]); the finest level is a residual at x's size.
    """
    if x.dim() != 5:
        raise ValueError(f"decompose expects (B, C, T, H, W), got shape {tuple(x.shape)}")
    facs = _check_factors(factors)
    level_shapes(x.shape[2:], facs, temporal_mode)  # validate every level before computing
    gauss = [x]  # down(X, s), fine to coarse; chained pooling equals direct pooling
    for f in reversed(facs):
        gauss.append(downsample(gauss[-1], f, temporal_mode))
    gauss = gauss[::-1]
    levels = [gauss[0]]
    for s in range(1, len(gauss)):
        levels.append(gauss[s] - upsample(gauss[s - 1], facs[s - 1], temporal_mode))
    return levels


def recompose(
    levels: Sequence[Tensor], factors: Sequence[Sequence[int]], temporal_mode: TemporalMode = "causal"
) -> Tensor:
    """Inverse of `decompose`: upsample-and-sum coarse to fine.

    Also works on a prefix of the pyramid (`levels[:k]`, `factors[:k-1]`): that gives the
    low-resolution image of the first k stages, which is what previews decode.
    """
    facs = _check_factors(factors)
    if len(levels) != len(facs) + 1:
        raise ValueError(f"recompose needs len(factors) + 1 = {len(facs) + 1} levels, got {len(levels)}")
    out = levels[0]
    for s in range(1, len(levels)):
        up = upsample(out, facs[s - 1], temporal_mode)
        if up.shape != levels[s].shape:
            raise ValueError(
                f"level {s + 1} has shape {tuple(levels[s].shape)} but upsampling level {s} gives {tuple(up.shape)}"
            )
        out = up + levels[s]
    return out
