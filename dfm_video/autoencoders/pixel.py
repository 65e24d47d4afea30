"""The weight-free `pixel` codec: exact space-to-depth patches, the embedded default.

(B, 3, F, H, W) in [-1, 1] -> (B, 3 * pt * ph * pw, F / pt, H / ph, W / pw); channel index is
((c * pt + dt) * ph + dy) * pw + dx. A pure permutation, so decode(encode(x)) == x bit for bit,
and values stay in [-1, 1] (identity scaling). With pt = 1 every frame is kept (T = F).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfm_video.autoencoders.base import Autoencoder, CodecGeometry, LatentScaling


class PixelAutoencoder(Autoencoder):
    kind = "pixel"

    def __init__(
        self,
        patch: tuple[int, int, int] = (1, 4, 4),
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        pt, ph, pw = (int(p) for p in patch)
        if min(pt, ph, pw) < 1:
            raise ValueError(f"pixel codec: patch sizes must be >= 1, got {tuple(patch)}")
        self.patch = (pt, ph, pw)
        self.id = f"pixel:{pt}x{ph}x{pw}"
        channels = 3 * pt * ph * pw
        self.geometry = CodecGeometry(channels, pt, (ph, pw), causal=False)
        self.scaling = LatentScaling.uniform(channels)
        self.device = torch.device(device)
        self.dtype = dtype

    def encode(self, video: Tensor) -> Tensor:
        self._check_video(video)
        b, c, f, h, w = video.shape
        pt, ph, pw = self.patch
        x = video.to(self.device, self.dtype).reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        # (B, c, T, pt, h, ph, w, pw) -> (B, c, pt, ph, pw, T, h, w)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * pt * ph * pw, f // pt, h // ph, w // pw).float()

    def decode(self, latents: Tensor) -> Tensor:
        b, ch, t, h, w = latents.shape
        pt, ph, pw = self.patch
        if ch != self.latent_channels:
            raise ValueError(
                f"{self.id}: decode expects {self.latent_channels} channels, got shape {tuple(latents.shape)}"
            )
        x = latents.reshape(b, 3, pt, ph, pw, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, 3, t * pt, h * ph, w * pw)
