"""diffusers VAEs (CogVideoX, Wan, image KL) behind the `Autoencoder` interface, local weights only.

A path must be an existing local directory holding the VAE's `config.json` (or a pipeline folder
with a `vae/` subfolder); a hub id is refused, so no run ever downloads weights behind the user's
back. Encoding takes the posterior MEAN of the VAE's Gaussian (deterministic: the same clip
always gives the same latents; no silent sampling), then applies the codec's latent scaling.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfm_video.autoencoders.base import Autoencoder, CodecGeometry, LatentScaling

# kind -> diffusers class name (also what `config.json["_class_name"]` must say)
DIFFUSERS_CLASSES = {
    "cogvideox": "AutoencoderKLCogVideoX",
    "wan": "AutoencoderKLWan",
    "kl": "AutoencoderKL",
}


def resolve_vae_dir(kind: str, path: str | Path) -> Path:
    """The local folder holding the VAE's config.json; `ValueError` for anything else (hub ids included)."""
    if not path:
        raise ValueError(f"autoencoder '{kind}' needs a local directory (preprocess.autoencoder_path), got ''")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(
            f"autoencoder '{kind}': path '{path}' is not an existing local directory; hub ids are not "
            f"accepted (download the VAE once and pass its folder)"
        )
    for candidate in (root, root / "vae"):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(f"autoencoder '{kind}': no config.json in '{root}' or '{root / 'vae'}'")


def read_vae_config(kind: str, path: str | Path) -> tuple[Path, dict[str, Any], str]:
    """(folder, config dict, codec id) without loading weights; checks the class matches `kind`."""
    if kind not in DIFFUSERS_CLASSES:
        raise ValueError(f"unknown diffusers autoencoder kind '{kind}' (expected one of {sorted(DIFFUSERS_CLASSES)})")
    folder = resolve_vae_dir(kind, path)
    raw = (folder / "config.json").read_bytes()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / 'config.json'}: not valid JSON: {exc}") from exc
    expected = DIFFUSERS_CLASSES[kind]
    found = config.get("_class_name")
    if found != expected:
        raise ValueError(
            f"{folder / 'config.json'}: _class_name is '{found}', but autoencoder '{kind}' expects '{expected}'"
        )
    name = folder.parent.name if folder.name == "vae" else folder.name
    codec_id = f"{kind}:{name}:{hashlib.sha256(raw).hexdigest()[:12]}"
    return folder, config, codec_id


def geometry_from_config(kind: str, config: dict[str, Any]) -> CodecGeometry:
    """Latent channels and compression factors read from a diffusers VAE config."""
    if kind == "wan":
        downs = list(config.get("temperal_downsample", [False, True, True]))
        temporal = config.get("scale_factor_temporal") or 2 ** sum(bool(d) for d in downs)
        spatial = config.get("scale_factor_spatial") or 2 ** len(downs) * int(config.get("patch_size") or 1)
        return CodecGeometry(int(config.get("z_dim", 16)), int(temporal), (int(spatial), int(spatial)), causal=True)
    spatial = 2 ** (len(config.get("block_out_channels", [64])) - 1)
    channels = int(config.get("latent_channels", 16 if kind == "cogvideox" else 4))
    if kind == "cogvideox":
        return CodecGeometry(
            channels, int(config.get("temporal_compression_ratio", 4)), (spatial, spatial), causal=True
        )
    return CodecGeometry(channels, 1, (spatial, spatial), causal=False)  # image VAE: frame by frame


def scaling_from_config(kind: str, config: dict[str, Any], channels: int) -> LatentScaling:
    """The latent scaling the diffusers pipelines apply for this codec, as (offset, multiplier)."""
    mean, std = config.get("latents_mean"), config.get("latents_std")
    if kind == "wan":
        # WanPipeline: latents = (z - latents_mean) / latents_std (no scaling_factor)
        return LatentScaling(tuple(float(m) for m in mean), tuple(1.0 / float(s) for s in std))
    factor = float(config.get("scaling_factor") or 1.0)
    if mean is not None and std is not None:
        return LatentScaling(tuple(float(m) for m in mean), tuple(factor / float(s) for s in std))
    return LatentScaling.uniform(channels, float(config.get("shift_factor") or 0.0), factor)


class DiffusersAutoencoder(Autoencoder):
    """A diffusers VAE loaded with `from_pretrained(local_dir)`; encode = scaled posterior mean."""

    def __init__(
        self, kind: str, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> None:
        import diffusers  # heavy import, only when a diffusers codec is used

        folder, config, self.id = read_vae_config(kind, path)
        self.kind = kind
        self.path = str(path)
        self.geometry = geometry_from_config(kind, config)
        self.scaling = scaling_from_config(kind, config, self.geometry.latent_channels)
        self.device = torch.device(device)
        self.dtype = dtype
        cls = getattr(diffusers, DIFFUSERS_CLASSES[kind])
        self.vae = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        self.vae.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        self._check_video(video)
        x = video.to(self.device, self.dtype)
        if self.kind == "kl":
            b, c, f, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * f, c, h, w)
            z = self.vae.encode(frames).latent_dist.mean  # (B*F, C, h, w)
            z = z.reshape(b, f, *z.shape[1:]).transpose(1, 2)
        else:
            z = self.vae.encode(x).latent_dist.mean  # (B, C, T, h, w)
        return self.scaling.scale(z.float())

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        z = self.scaling.unscale(latents.to(self.device, torch.float32)).to(self.dtype)
        if self.kind == "kl":
            b, c, t, h, w = z.shape
            frames = self.vae.decode(z.transpose(1, 2).reshape(b * t, c, h, w)).sample
            return frames.reshape(b, t, *frames.shape[1:]).transpose(1, 2)
        return self.vae.decode(z).sample
