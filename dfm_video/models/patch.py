"""Per-stage patch sizes, token grids, patchify and unpatchify.

Stages are 0-based here, coarse to fine (messages print them 1-based like `dfm.pyramid`).
The finest stage uses the base patch (pt, ph, pw); each coarser stage's patch is the finer one's
divided by that transition's pyramid factor, so every stage yields the same token grid and the
summed token sequence is as long as a single-scale DiT's.

Odd T (causal VAEs, `temporal_mode="causal"`): a stage with temporal patch pt > 1 gets
T = 1 + pt*k frames. Like CogVideoX, frame 0 is replicate-padded at the front with pt - 1 copies,
giving (T + pt - 1) / pt temporal tokens: token 0 holds frame 0 alone, token j frames
pt*(j-1)+1 .. pt*j, exactly the frames the causal pyramid averages into coarse frame j.
Unpatchify drops the pt - 1 leading output frames again. In `uniform` mode T must divide by pt,
except T = 1 (an image in a model that also sees videos): a single frame is one temporal token in
either mode, padded the same way, so one model takes image and video batches.
Shape legend: B batch, C channels, T H W frames/height/width, N = Tg*Hg*Wg tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

Patch = tuple[int, int, int]
_AXES = ("T", "H", "W")


def stage_patch_sizes(base_patch: Sequence[int], factors: Sequence[Sequence[int]]) -> list[Patch]:
    """Patch (pt, ph, pw) of every stage, coarse to fine; the last is `base_patch`.

    `factors[i]` is the pyramid factor between stage i and stage i+1 (0-based). Raises ValueError
    naming the stage, axis, patch and factor when a finer patch is not divisible by the factor.
    """
    base = tuple(int(p) for p in base_patch)
    if len(base) != 3 or any(p < 1 for p in base):
        raise ValueError(f"model.patch_size must be three positive ints (pt, ph, pw), got {tuple(base_patch)}")
    S = len(factors) + 1
    patches: list[Patch] = [base]
    for i in reversed(range(S - 1)):
        finer, f = patches[0], tuple(int(v) for v in factors[i])
        for a in range(3):
            if finer[a] % f[a]:
                raise ValueError(
                    f"stage {i + 1} of {S} (1 = coarsest): axis {_AXES[a]} needs the patch {finer[a]} of stage "
                    f"{i + 2} (patch {finer}) divisible by the factor {f[a]} (factors[{i}] = {f}); "
                    f"choose model.patch_size so every stage gets an integer patch"
                )
        patches.insert(0, tuple(finer[a] // f[a] for a in range(3)))
    return patches


def _pads_first_frame(T: int, temporal_mode: str) -> bool:
    return temporal_mode == "causal" or T == 1


def token_grid(shape: Sequence[int], patch: Sequence[int], temporal_mode: str = "causal") -> tuple[int, int, int]:
    """Token grid (Tg, Hg, Wg) of a level of shape (T, H, W) under `patch` (see module docstring)."""
    T, H, W = (int(v) for v in shape)
    pt, ph, pw = patch
    if pt > 1 and _pads_first_frame(T, temporal_mode):
        if (T - 1) % pt:
            raise ValueError(f"T={T} with temporal patch {pt} in causal mode needs T = 1 + {pt}k")
        Tg = (T + pt - 1) // pt
    else:
        if T % pt:
            raise ValueError(f"T={T} is not divisible by the temporal patch {pt} (temporal_mode={temporal_mode!r})")
        Tg = T // pt
    for name, size, p in (("H", H, ph), ("W", W, pw)):
        if size % p:
            raise ValueError(f"{name}={size} is not divisible by the patch {p}")
    return Tg, H // ph, W // pw


def patchify(x: Tensor, patch: Sequence[int], temporal_mode: str = "causal") -> Tensor:
    """(B, C, T, H, W) -> (B, N, C*pt*ph*pw) tokens in (t, h, w) row-major order."""
    pt, ph, pw = patch
    Tg, Hg, Wg = token_grid(x.shape[2:], patch, temporal_mode)  # validates
    if pt > 1 and _pads_first_frame(x.shape[2], temporal_mode):
        x = torch.cat([x[:, :, :1].expand(-1, -1, pt - 1, -1, -1), x], dim=2)
    B, C = x.shape[:2]
    # b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw); plain torch so the GPU image needs no einops
    x = x.reshape(B, C, Tg, pt, Hg, ph, Wg, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(B, Tg * Hg * Wg, C * pt * ph * pw)


def unpatchify(
    tokens: Tensor,
    grid: Sequence[int],
    patch: Sequence[int],
    channels: int,
    temporal_mode: str = "causal",
    frames: int | None = None,
) -> Tensor:
    """(B, N, C*pt*ph*pw) -> (B, C, T, H, W); inverse of `patchify` (drops causal padding frames).

    `frames`: T of the level that was patchified; needed only to tell a uniform-mode image (T = 1,
    padded) from a uniform-mode clip of pt frames, which give the same grid."""
    pt, ph, pw = patch
    Tg, Hg, Wg = grid
    B = tokens.shape[0]
    # b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)
    x = tokens.reshape(B, Tg, Hg, Wg, channels, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    x = x.reshape(B, channels, Tg * pt, Hg * ph, Wg * pw)
    if pt > 1 and (temporal_mode == "causal" or (frames == 1 and Tg == 1)):
        x = x[:, :, pt - 1 :]
    return x


def stage_upsample_factors(factors: Sequence[Sequence[int]] | None, num_stages: int) -> list[Patch]:
    """Per-stage input upsampling (ft, fh, fw), coarse to fine; None means (1, 1, 1) everywhere.

    A stage with factor u is upsampled u-fold (nearest) before its patch embedder, patchified with
    its patch times u, and its head's output is averaged back down by u (`downsample_mean`): a
    pretrained model's larger patch then applies to a coarser stage on the same token grid
    (DFM_METHOD.md section 6b). Each entry is 1 or 2 per axis, ft = 1 (no temporal upsampling: the
    causal frame-0 rule has no nearest-upsampled counterpart).
    """
    if factors is None:
        return [(1, 1, 1)] * num_stages
    if len(factors) != num_stages:
        raise ValueError(f"model.upsample_factors has {len(factors)} entries; {num_stages} stages need {num_stages}")
    out: list[Patch] = []
    for s, f in enumerate(factors):
        u = tuple(int(v) for v in f)
        if len(u) != 3 or u[0] != 1 or any(v not in (1, 2) for v in u[1:]):
            raise ValueError(f"model.upsample_factors[{s}] must be (1, fh, fw) with fh, fw in {{1, 2}}, got {list(f)}")
        out.append(u)
    return out


def upsample_nearest(x: Tensor, factor: Sequence[int]) -> Tensor:
    """(B, C, T, H, W) -> (B, C, T*ft, H*fh, W*fw) by repeating each element (nearest)."""
    for axis, f in zip((2, 3, 4), factor):
        if f > 1:
            x = x.repeat_interleave(f, dim=axis)
    return x


def downsample_mean(x: Tensor, factor: Sequence[int]) -> Tensor:
    """(B, C, T*ft, H*fh, W*fw) -> (B, C, T, H, W): the mean of each block, one axis at a time.

    Factor 2 only, as (a + b) * 0.5 per axis: for a nearest-upsampled field (a == b) each step is exact
    in floating point by construction, so `downsample_mean(upsample_nearest(x, f), f) == x` bit for bit
    and a coarse stage run through the upsampled path keeps its exact coarse-resolution dynamics. It
    is 2x2 average pooling (the pyramid's own downsampling, the adjoint of nearest upsampling / 4) up
    to rounding; a strided pick would also invert the upsampling but would alias the pretrained output.
    """
    for axis, f in zip((2, 3, 4), factor):
        if f == 1:
            continue
        if f != 2 or x.shape[axis] % 2:
            raise ValueError(f"downsample_mean: factor {f} on axis of size {x.shape[axis]} (needs factor 2, even size)")
        pair = x.unflatten(axis, (x.shape[axis] // 2, 2))
        x = (pair.select(axis + 1, 0) + pair.select(axis + 1, 1)) * 0.5
    return x
