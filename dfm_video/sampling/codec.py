"""Finding the autoencoder a model's latents decode with, and the weights digest that names a model.

Lookup order for a diffusers codec: `--autoencoder-path` > the export's bundled copy
(`<export>/autoencoder/`, written by `python -m dfm_video.train.export --autoencoder-weights`) >
the path recorded when the data was preprocessed. Whatever is found must have the recorded codec
id (kind, folder name and config hash), so a different VAE never decodes the latents silently.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from dfm_video.autoencoders import Autoencoder, autoencoder_info, load_autoencoder

BUNDLE = "autoencoder"


def _patch(codec: Mapping[str, Any]) -> tuple[int, int, int]:
    return (int(codec.get("temporal", 1)), *[int(v) for v in codec.get("spatial", (1, 1))])  # type: ignore[return-value]


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any((folder / "vae").glob("*.safetensors"))


def resolve_codec(codec: Mapping[str, Any], source: Path, override: Optional[str] = None) -> dict[str, Any]:
    """The codec record with `path` pointing at a usable copy; ValueError naming what was tried."""
    codec = dict(codec)
    if codec.get("kind", "pixel") == "pixel":
        return codec  # weight-free
    copies = sorted(p for p in (Path(source) / BUNDLE).glob("*") if p.is_dir())
    bundled = copies[0] if len(copies) == 1 else Path(source) / BUNDLE
    if override:
        path, how = str(override), "--autoencoder-path"
    elif bundled.is_dir() and _has_weights(bundled):
        path, how = str(bundled), f"the copy bundled with {source}"
    else:
        path, how = str(codec.get("path", "")), "the path recorded at preprocessing"
    try:
        found = autoencoder_info(codec["kind"], path, _patch(codec))["id"]
    except ValueError as exc:
        raise ValueError(
            f"autoencoder for {source}: {how} '{path}' is not usable ({exc}); pass --autoencoder-path DIR, or "
            "export with `python -m dfm_video.train.export --autoencoder-weights` so the export carries it"
        ) from exc
    if found != codec.get("id"):
        raise ValueError(
            f"autoencoder for {source}: {how} '{path}' is '{found}', but the data was encoded with '{codec.get('id')}'"
        )
    codec["path"] = path
    return codec


@lru_cache(maxsize=2)
def _load(kind: str, path: str, device: str, patch: tuple[int, int, int]) -> Autoencoder:
    return load_autoencoder(kind, path, device=device, pixel_patch=patch)


def codec_for(codec: Mapping[str, Any], device: torch.device | str) -> Autoencoder:
    """The (cached: loading a VAE per batch would dominate) autoencoder of a codec record on `device`."""
    return _load(codec["kind"], str(codec.get("path", "")), str(torch.device(device)), _patch(codec))


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted (name, dtype, shape, bytes): names a model whatever file format held it."""
    h = hashlib.sha256()
    for k in sorted(weights):
        t = weights[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
