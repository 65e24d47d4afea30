"""Stage 2 (Ray actors): frames -> autoencoder latents -> spatio-temporal Laplacian pyramid.

The actor loads the codec once (`dfm_video.autoencoders`, the same wrapper the sampler decodes
with) and runs on a GPU when the config gives it one. Levels leave as float32 arrays, coarse to
fine, BEFORE standardisation (the writer gathers the statistics, the trainer standardises).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dfm_video.autoencoders import DTYPES, Autoencoder, load_autoencoder
from dfm_video.config.schema import Config
from dfm_video.dfm.pyramid import decompose


@dataclass(frozen=True)
class EncodeSpec:
    kind: str
    path: str
    pixel_patch: tuple[int, int, int]
    dtype: str
    use_gpu: bool
    factors: tuple[tuple[int, int, int], ...]
    temporal_mode: str
    level_shapes: tuple[tuple[int, int, int, int], ...]  # (C, T, h, w) per level, from the up-front plan

    @classmethod
    def from_config(cls, cfg: Config, level_shapes: list[tuple[int, int, int, int]]) -> "EncodeSpec":
        p = cfg.preprocess
        return cls(p.autoencoder, p.autoencoder_path, tuple(p.pixel_patch), p.autoencoder_dtype, p.encode_gpus > 0,
                   tuple(tuple(f) for f in cfg.dfm.factors), cfg.dfm.temporal_mode, tuple(tuple(s) for s in level_shapes))


def frames_to_video(frames: np.ndarray) -> Tensor:
    """(N, F, H, W, 3) uint8 -> (N, 3, F, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def encode_levels(ae: Autoencoder, frames: np.ndarray, factors: Any, temporal_mode: str) -> list[Tensor]:
    """(N, F, H, W, 3) uint8 -> pyramid levels, each (N, C, T_s, h_s, w_s) float32 on the CPU."""
    latents = ae.encode(frames_to_video(frames))  # float32 whatever precision the codec ran in
    return [x.cpu() for x in decompose(latents, factors, temporal_mode)]


class EncodeStage:
    """Ray actor: adds `level_{s}` columns, drops `frames`; clips with non-finite latents are rejected."""

    def __init__(self, spec: EncodeSpec) -> None:
        if spec.use_gpu and not torch.cuda.is_available():
            raise RuntimeError("preprocess.encode_gpus > 0 but this Ray actor sees no CUDA device")
        self.spec = spec
        device = "cuda" if spec.use_gpu else "cpu"
        self.ae = load_autoencoder(spec.kind, spec.path, device=device, dtype=DTYPES[spec.dtype], pixel_patch=spec.pixel_patch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "frames"}
        n = len(batch["key"])
        levels = [np.zeros((n, *shape), dtype=np.float32) for shape in self.spec.level_shapes]
        reason = out["reason"] = np.array(batch["reason"], dtype=object)
        stage, detail = np.array(batch["stage"], dtype=object), np.array(batch["detail"], dtype=object)
        ok = np.array([r == "" for r in reason])
        if ok.any():
            encoded = encode_levels(self.ae, batch["frames"][ok], self.spec.factors, self.spec.temporal_mode)
            rows = np.flatnonzero(ok)
            finite = torch.stack([torch.isfinite(x.flatten(1)).all(dim=1) for x in encoded]).all(dim=0)
            for s, x in enumerate(encoded):
                levels[s][rows] = x.numpy()
            for j in np.flatnonzero(~finite.numpy()):
                i = rows[j]
                stage[i], reason[i] = "encode", "non-finite latents"
                detail[i] = f"{batch['path'][i]}: {self.ae.id} produced NaN/inf latents"
        out.update(stage=stage, detail=detail, **{f"level_{s}": x for s, x in enumerate(levels)})
        return out
