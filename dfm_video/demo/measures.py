"""Cheap, reference-free checks that generated clips look like the training clips.

Videos are float tensors (B, 3, F, H, W) in [-1, 1] (what the autoencoders decode to).

- `hf_energy`: mean squared difference between a clip and its blurred self, x - up(down(x))
  with the pyramid's own 2x2 average-pool down and bilinear up, per frame. Noise-like samples
  have far more of it than real clips; over-smoothed samples less. Compare as a ratio.
- `nearest_psnr`: for every sample, the PSNR (8-bit scale) to the closest training clip. A model
  that reproduces its (tiny) training set scores high; coloured noise scores ~13 dB.
- `fine_level_std`: std of the finest pyramid level in standardised units (1.0 for the data).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from dfm_video.dfm import LevelStats, decompose, downsample, standardize, upsample


def _check_video(x: Tensor, what: str) -> None:
    if x.dim() != 5 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected videos (B, 3, F, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"{what}: H and W must be even for the 2x2 blur, got {tuple(x.shape[-2:])}")


def hf_energy(video: Tensor) -> Tensor:
    """(B,) mean of (x - up(down(x)))^2 per clip, spatial factor 2 per frame."""
    _check_video(video, "hf_energy")
    x = video.double()
    blurred = upsample(downsample(x, (1, 2, 2)), (1, 2, 2))
    return (x - blurred).pow(2).flatten(1).mean(dim=1)


def psnr_to_nearest(samples: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) PSNR in dB (peak 255 on the 8-bit scale) of each sample to its closest reference, and
    the index of that reference. Both sets are (N, 3, F, H, W) in [-1, 1], same shape per clip."""
    _check_video(samples, "psnr_to_nearest samples")
    _check_video(references, "psnr_to_nearest references")
    if samples.shape[1:] != references.shape[1:]:
        raise ValueError(
            f"samples {tuple(samples.shape[1:])} and references {tuple(references.shape[1:])} differ in shape"
        )
    a = (samples.double().clamp(-1, 1) + 1) * 127.5
    b = (references.double().clamp(-1, 1) + 1) * 127.5
    mse = torch.cdist(a.flatten(1), b.flatten(1)).pow(2) / a[0].numel()  # (B, N)
    best, idx = mse.min(dim=1)
    return 10 * torch.log10(255.0**2 / best.clamp_min(1e-12)), idx


def fine_level_std(
    latents: Tensor, factors: Sequence[Sequence[int]], temporal_mode: str, stats: Optional[LevelStats]
) -> float:
    """Std of the finest level of `latents` (recomposed, destandardised) in standardised units."""
    levels = decompose(latents.float(), factors, temporal_mode)
    if stats is not None and stats.num_levels == len(levels):
        levels = standardize(levels, stats)
    return float(levels[-1].std())


def quality_summary(samples: Tensor, references: Tensor) -> dict[str, float]:
    """The demo's numbers for one method: hf energy ratio samples / references, PSNR to nearest."""
    hf_s, hf_r = hf_energy(samples), hf_energy(references)
    psnr, _ = psnr_to_nearest(samples, references)
    return {
        "hf_energy": float(hf_s.mean()),
        "hf_energy_real": float(hf_r.mean()),
        "hf_ratio": float(hf_s.mean() / hf_r.mean()),
        "nearest_psnr_db": float(psnr.mean()),
        "nearest_psnr_db_min": float(psnr.min()),
        "nearest_psnr_db_max": float(psnr.max()),
    }
