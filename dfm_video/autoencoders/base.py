"""The one autoencoder interface that preprocessing (encode) and sampling (decode) share.

Shapes: video is (B, 3, F, H, W) in [-1, 1]; latents are (B, C, T, h, w). Latent scaling (a
per-channel offset and multiplier derived from the codec's config) is applied HERE and nowhere
else: `encode` returns scaled latents, `decode` takes scaled latents. Whoever stores or trains on
latents never sees raw VAE outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class LatentScaling:
    """Per-channel affine map raw -> scaled latents: `scaled = (raw - offset) * multiplier`.

    Covers every supported codec: CogVideoX / KL `(z - shift_factor) * scaling_factor` (offset =
    shift, multiplier = scaling), KL with `latents_mean/std` (offset = mean, multiplier =
    scaling / std) and Wan `(z - latents_mean) / latents_std` (multiplier = 1 / std).
    """

    offset: tuple[float, ...]
    multiplier: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.multiplier):
            raise ValueError(
                f"LatentScaling: offset has {len(self.offset)} channels, multiplier {len(self.multiplier)}"
            )
        if any(m == 0 for m in self.multiplier):
            raise ValueError(f"LatentScaling: a zero multiplier cannot be inverted: {self.multiplier}")

    @classmethod
    def uniform(cls, channels: int, offset: float = 0.0, multiplier: float = 1.0) -> "LatentScaling":
        return cls((float(offset),) * channels, (float(multiplier),) * channels)

    def _vec(self, values: Sequence[float], like: Tensor) -> Tensor:
        # (C,) -> (1, C, 1, 1, 1) for (B, C, T, h, w) latents
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)

    def scale(self, raw: Tensor) -> Tensor:
        return (raw - self._vec(self.offset, raw)) * self._vec(self.multiplier, raw)

    def unscale(self, scaled: Tensor) -> Tensor:
        return scaled / self._vec(self.multiplier, scaled) + self._vec(self.offset, scaled)

    def to_dict(self) -> dict[str, list[float]]:
        return {"offset": list(self.offset), "multiplier": list(self.multiplier)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> "LatentScaling":
        return cls(tuple(float(v) for v in data["offset"]), tuple(float(v) for v in data["multiplier"]))


@dataclass(frozen=True)
class CodecGeometry:
    """How a codec maps F frames of H x W pixels to (C, T, h, w) latents (known without weights).

    `causal`: the first frame is encoded alone, so T = 1 + (F - 1) / temporal and F must be 1 + k *
    temporal (CogVideoX, Wan). Otherwise T = F / temporal and F must be a multiple of temporal.
    """

    latent_channels: int
    temporal: int
    spatial: tuple[int, int]
    causal: bool

    def latent_shape(
        self, frames: int, height: int, width: int, codec: str = "autoencoder"
    ) -> tuple[int, int, int, int]:
        """(C, T, h, w) for a (3, frames, height, width) clip; `ValueError` naming the value that does not fit."""
        k = self.temporal
        if frames < 1:
            raise ValueError(f"{codec}: num_frames must be >= 1, got {frames}")
        if self.causal:
            if (frames - 1) % k:
                lo = 1 + (frames - 1) // k * k
                raise ValueError(
                    f"{codec}: num_frames={frames} does not fit a causal codec with temporal compression {k}: "
                    f"it needs 1 + {k}k frames (e.g. {lo} or {lo + k})"
                )
            t = 1 + (frames - 1) // k
        else:
            if frames % k:
                raise ValueError(f"{codec}: num_frames={frames} is not a multiple of its temporal patch {k}")
            t = frames // k
        sh, sw = self.spatial
        for name, size, f in (("height", height, sh), ("width", width, sw)):
            if size % f:
                raise ValueError(f"{codec}: {name}={size} is not a multiple of its spatial compression {f}")
        return self.latent_channels, t, height // sh, width // sw


def describe_codec(codec_id: str, kind: str, geometry: CodecGeometry, scaling: LatentScaling) -> dict[str, Any]:
    """The JSON record of a codec that shards carry: id, kind, geometry and latent scaling."""
    return {
        "id": codec_id,
        "kind": kind,
        "latent_channels": geometry.latent_channels,
        "temporal": geometry.temporal,
        "spatial": list(geometry.spatial),
        "causal": geometry.causal,
        "scaling": scaling.to_dict(),
    }


class Autoencoder(ABC):
    """A video codec: `encode` (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, T, h, w); `decode` back.

    Both are deterministic and run without autograd. `id` names the codec and its config so that
    shards and samplers can check they use the same one.
    """

    kind: str
    id: str
    geometry: CodecGeometry
    scaling: LatentScaling
    device: torch.device
    dtype: torch.dtype

    @property
    def latent_channels(self) -> int:
        return self.geometry.latent_channels

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, h, w) of one clip; `ValueError` when the frame count or size does not fit the codec."""
        return self.geometry.latent_shape(frames, height, width, codec=self.id)

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, T, h, w), float32 on `self.device`.

        The codec runs in `self.dtype`; the scaling is applied in float32 either way."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents (B, C, T, h, w) -> video (B, 3, F, H, W), nominally in [-1, 1] (not clamped)."""

    def describe(self) -> dict[str, Any]:
        """What shards record about the codec (JSON-serialisable); see `describe_codec`."""
        return describe_codec(self.id, self.kind, self.geometry, self.scaling)

    def _check_video(self, video: Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"{self.id}: encode expects video (B, 3, F, H, W), got shape {tuple(video.shape)}")
        self.latent_shape(*video.shape[2:])
