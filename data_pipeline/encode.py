"""Stage 2 (Ray actors): frames -> autoencoder latents -> spatio-temporal Laplacian pyramid.

The actor loads the codec once (`dfm_video.autoencoders`, the same wrapper the sampler decodes
with) and runs on a GPU when the config gives it one: frames travel to the device as uint8 (a
quarter of the float32 bytes) and become [-1, 1] floats there. Levels are float32, coarse to fine,
BEFORE standardisation (the shard writer gathers the statistics, the trainer standardises).

Failures: when a micro-batch raises (CUDA out of memory, a codec bug tripped by one input), it is
retried clip by clip and only the clips that still fail are rejected (stage "encode", reason
"autoencoder error"); clips with NaN/inf latents are rejected too. The job goes on.
Test hook (tests only): `EncodeSpec.fault_names`, filled by the driver from the environment
variable DFM_TEST_ENCODE_HOOK (comma-separated file base names): a micro-batch holding one raises.
"""

from __future__ import annotations

import os
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
    batch_size: int = 0  # clips per autoencoder call (0 = the whole batch at once)
    fault_names: tuple[str, ...] = ()  # tests only (DFM_TEST_ENCODE_HOOK)

    @classmethod
    def from_config(cls, cfg: Config, level_shapes: list[tuple[int, int, int, int]]) -> "EncodeSpec":
        p = cfg.preprocess
        hook = tuple(n for n in os.environ.get("DFM_TEST_ENCODE_HOOK", "").split(",") if n)
        return cls(
            p.autoencoder,
            p.autoencoder_path,
            tuple(p.pixel_patch),
            p.autoencoder_dtype,
            p.encode_gpus > 0,
            tuple(tuple(f) for f in cfg.dfm.factors),
            cfg.dfm.temporal_mode,
            tuple(tuple(s) for s in level_shapes),
            p.batch_size,
            hook,
        )


def frames_to_video(frames: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(N, F, H, W, 3) uint8 -> (N, 3, F, H, W) float32 in [-1, 1] on `device` (uint8 crosses to it)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def encode_levels(ae: Autoencoder, frames: np.ndarray, factors: Any, temporal_mode: str) -> list[Tensor]:
    """(N, F, H, W, 3) uint8 -> pyramid levels, each (N, C, T_s, h_s, w_s) float32 on the CPU.

    Conversion, codec and pyramid all run on the codec's device."""
    latents = ae.encode(frames_to_video(frames, ae.device))  # float32 whatever precision the codec ran in
    return [x.cpu() for x in decompose(latents, factors, temporal_mode)]


class EncodeStage:
    """Ray actor: adds `level_{s}` columns, drops `frames`; clips with non-finite latents are rejected."""

    def __init__(self, spec: EncodeSpec) -> None:
        if spec.use_gpu and not torch.cuda.is_available():
            raise RuntimeError("preprocess.encode_gpus > 0 but this Ray actor sees no CUDA device")
        self.spec = spec
        device = "cuda" if spec.use_gpu else "cpu"
        self.ae = load_autoencoder(
            spec.kind, spec.path, device=device, dtype=DTYPES[spec.dtype], pixel_patch=spec.pixel_patch
        )

    def _encode(self, frames: np.ndarray, paths: list[str]) -> list[Tensor]:
        hit = [p for p in paths if os.path.basename(p) in self.spec.fault_names]
        if hit:
            raise RuntimeError(f"CUDA out of memory (DFM_TEST_ENCODE_HOOK: {hit[0]})")
        return encode_levels(self.ae, frames, self.spec.factors, self.spec.temporal_mode)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "frames"}
        n = len(batch["key"])
        levels = [np.zeros((n, *shape), dtype=np.float32) for shape in self.spec.level_shapes]
        reason = out["reason"] = np.array(batch["reason"], dtype=object)
        stage, detail = np.array(batch["stage"], dtype=object), np.array(batch["detail"], dtype=object)
        rows = np.flatnonzero([r == "" for r in reason])
        step = self.spec.batch_size if self.spec.batch_size > 0 else max(1, len(rows))
        for lo in range(0, len(rows), step):
            group = rows[lo : lo + step]
            try:
                self._fill(batch, group, levels)
            except Exception as exc:
                if len(group) == 1:
                    self._reject(batch, group[0], exc, stage, reason, detail)
                    continue
                for i in group:  # one bad clip must not take the others with it
                    try:
                        self._fill(batch, np.array([i]), levels)
                    except Exception as exc1:
                        self._reject(batch, i, exc1, stage, reason, detail)
        for i in rows:
            if reason[i] == "" and not all(np.isfinite(x[i]).all() for x in levels):
                stage[i], reason[i] = "encode", "non-finite latents"
                detail[i] = f"{batch['path'][i]}: {self.ae.id} produced NaN/inf latents"
        out.update(stage=stage, detail=detail, **{f"level_{s}": x for s, x in enumerate(levels)})
        return out

    def _fill(self, batch: dict[str, np.ndarray], group: np.ndarray, levels: list[np.ndarray]) -> None:
        encoded = self._encode(batch["frames"][group], [str(batch["path"][i]) for i in group])
        for s, x in enumerate(encoded):
            levels[s][group] = x.numpy()

    def _reject(
        self,
        batch: dict[str, np.ndarray],
        i: int,
        exc: Exception,
        stage: np.ndarray,
        reason: np.ndarray,
        detail: np.ndarray,
    ) -> None:
        if self.spec.use_gpu:
            torch.cuda.empty_cache()  # after an out-of-memory error the next clip gets a clean allocator
        stage[i], reason[i] = "encode", "autoencoder error"
        detail[i] = f"{batch['path'][i]}: {self.ae.id} raised {type(exc).__name__}: {exc}"
