"""Latent codecs shared by preprocessing (encode) and sampling (decode).

`load_autoencoder(kind, path, device, dtype)` returns an `Autoencoder`; `autoencoder_info(...)`
gives the same codec's id, geometry and scaling without loading weights (for up-front checks).
Kinds: `pixel` (weight-free space-to-depth, the default), `cogvideox`, `wan`, `kl` (diffusers,
local directories only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from dfm_video.autoencoders.base import Autoencoder, CodecGeometry, LatentScaling, describe_codec
from dfm_video.autoencoders.diffusers_vae import (
    DIFFUSERS_CLASSES,
    DiffusersAutoencoder,
    geometry_from_config,
    read_vae_config,
    scaling_from_config,
)
from dfm_video.autoencoders.pixel import PixelAutoencoder

KINDS = ("pixel", *DIFFUSERS_CLASSES)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown autoencoder '{kind}' (expected one of {', '.join(KINDS)})")


def load_autoencoder(
    kind: str,
    path: str | Path = "",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    pixel_patch: Sequence[int] = (1, 4, 4),
) -> Autoencoder:
    """Build the codec `kind`; diffusers kinds load from the local directory `path` (never a hub)."""
    _check_kind(kind)
    if kind == "pixel":
        return PixelAutoencoder(tuple(pixel_patch), device=device, dtype=dtype)
    return DiffusersAutoencoder(kind, path, device=device, dtype=dtype)


def autoencoder_info(kind: str, path: str | Path = "", pixel_patch: Sequence[int] = (1, 4, 4)) -> dict[str, Any]:
    """`Autoencoder.describe()` of the codec, read from its config only (no weights loaded)."""
    _check_kind(kind)
    if kind == "pixel":
        return PixelAutoencoder(tuple(pixel_patch)).describe()
    _, config, codec_id = read_vae_config(kind, path)
    geometry = geometry_from_config(kind, config)
    return describe_codec(codec_id, kind, geometry, scaling_from_config(kind, config, geometry.latent_channels))


def geometry_of(info: dict[str, Any]) -> CodecGeometry:
    """The `CodecGeometry` recorded in an `autoencoder_info` / `describe()` dict."""
    return CodecGeometry(
        int(info["latent_channels"]), int(info["temporal"]), tuple(info["spatial"]), bool(info["causal"])
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = [
    "DTYPES",
    "KINDS",
    "Autoencoder",
    "CodecGeometry",
    "DiffusersAutoencoder",
    "LatentScaling",
    "PixelAutoencoder",
    "autoencoder_info",
    "geometry_of",
    "load_autoencoder",
]
