"""Stage 2 (Ray actors): frames -> autoencoder latents -> spatio-temporal Laplacian pyramid + moments.

The actor loads the codec once (`dfm_video.autoencoders`, the same wrapper the sampler decodes
with) and runs on a GPU when the config gives it one. Everything per clip happens on the codec's
device, so the host only moves uint8 frames in and finished float32 levels out:
- frames cross as uint8 (a quarter of the float32 bytes), from pinned memory on a side CUDA
  stream, the copy of the next micro-batch overlapping the encode of the current one; they become
  [-1, 1] floats on the device;
- several clips go through the autoencoder per call (`batch_size`, further bounded on a GPU by a
  memory budget: the peak memory per clip is measured on the first call, a micro-batch is capped
  at `memory_fraction` of the device memory free at start-up, and halved after an out-of-memory
  error), in the precision the config gives the codec (`preprocess.autoencoder_dtype`);
- the pyramid, the rounding to the storage dtype (`preprocess.latent_dtype`) and the float64
  per-clip moments of each level and of the recomposed latent (`clip_moments`, merged by the
  shard writer) are computed there too.
Levels are float32, coarse to fine, BEFORE standardisation (the trainer standardises).

Options kept off by default (`EncodeSpec.channels_last`, `.compile`): `channels_last_3d` and
`torch.compile` of the codec's encoder change kernels (results equal only to float tolerance),
compile costs minutes of warm-up per actor and recompiles per micro-batch size; turn them on where
benchmarks/preprocess_gpu_node.py shows they pay on the machine at hand.

Failures: when a micro-batch raises (CUDA out of memory, a codec bug tripped by one input), it is
retried clip by clip and only the clips that still fail are rejected (stage "encode", reason
"autoencoder error"); clips with NaN/inf latents are rejected too. The job goes on.
Fault `encode.oom` (dfm_video.faults, tests only): a list of file base names; a micro-batch holding
one raises a CUDA-out-of-memory error. The driver reads it into `EncodeSpec.oom_names`, because
Ray worker processes started before a test switched it on do not see the environment change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from dfm_video import faults
from dfm_video.autoencoders import DTYPES, Autoencoder, load_autoencoder
from dfm_video.config.schema import Config
from dfm_video.dfm.pyramid import decompose, recompose
from dfm_video.dfm.standardize import clip_moments

log = logging.getLogger(__name__)


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
    latent_dtype: str = "float32"  # storage dtype: levels are rounded to it before their moments are taken
    channels_last: bool = False  # codec weights and input in channels_last_3d (see the module docstring)
    compile: bool = False  # torch.compile the codec's encoder (see the module docstring)
    memory_fraction: float = 0.8  # of the device memory free at start-up that one autoencoder call may use
    oom_names: tuple[str, ...] = ()  # fault encode.oom (tests only)

    @classmethod
    def from_config(cls, cfg: Config, level_shapes: list[tuple[int, int, int, int]], **options: Any) -> "EncodeSpec":
        """The spec of `cfg`; `options` set the fields the config does not carry (channels_last, compile, ...)."""
        p = cfg.preprocess
        oom = faults.get("encode.oom", [])
        if not isinstance(oom, list) or not all(isinstance(n, str) for n in oom):
            raise ValueError(f"fault encode.oom must be a list of file base names, got {oom!r}")
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
            p.latent_dtype,
            oom_names=tuple(oom),
            **options,
        )


def uint8_to_video(x: Tensor) -> Tensor:
    """(N, F, H, W, 3) uint8 -> (N, 3, F, H, W) float32 in [-1, 1], on `x`'s device."""
    return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)


def frames_to_video(frames: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(N, F, H, W, 3) uint8 -> (N, 3, F, H, W) float32 in [-1, 1] on `device` (uint8 crosses to it)."""
    return uint8_to_video(torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True))


def encode_levels(ae: Autoencoder, frames: np.ndarray, factors: Any, temporal_mode: str) -> list[Tensor]:
    """(N, F, H, W, 3) uint8 -> pyramid levels, each (N, C, T_s, h_s, w_s) float32 on the CPU.

    Conversion, codec and pyramid all run on the codec's device."""
    latents = ae.encode(frames_to_video(frames, ae.device))  # float32 whatever precision the codec ran in
    return [x.cpu() for x in decompose(latents, factors, temporal_mode)]


@dataclass
class Encoded:
    """One micro-batch, back on the host: levels as stored, moments, and which clips are finite."""

    levels: list[Tensor]  # (B, C, T_s, h_s, w_s) float32, rounded to the storage dtype
    moments: Tensor  # (B, S + 1, 2, C) float64: (mean, m2) per level, then of the recomposed latent
    finite: Tensor  # (B,) bool


def encode_on_device(
    ae: Autoencoder, video: Tensor, factors: Any, temporal_mode: str, latent_dtype: str = "float32"
) -> Encoded:
    """(B, 3, F, H, W) in [-1, 1] on the codec's device -> `Encoded` (codec, pyramid, rounding and
    moments on the device; one copy of the results to the host)."""
    levels = decompose(ae.encode(video), factors, temporal_mode)
    finite = torch.stack([torch.isfinite(x).flatten(1).all(dim=1) for x in levels]).all(dim=0)
    store = getattr(torch, latent_dtype)
    levels = [x.to(store).float() for x in levels]  # the values the shard will hold
    parts = [clip_moments(x) for x in levels]
    parts.append(clip_moments(recompose(levels, factors, temporal_mode)))
    moments = torch.stack([torch.stack([mean, m2], dim=1) for _, mean, m2 in parts], dim=1)
    return Encoded([x.cpu() for x in levels], moments.cpu(), finite.cpu())


class EncodeStage:
    """Ray actor: adds `level_{s}` and `moments` columns, drops `frames`; clips with non-finite latents
    are rejected. `moments[i]` is (S + 1, 2, C) float64: per level (mean, m2) of clip i as stored,
    then those of its recomposed latent (what `dfm_video.data.store.write_clips` merges)."""

    def __init__(self, spec: EncodeSpec) -> None:
        if spec.use_gpu and not torch.cuda.is_available():
            raise RuntimeError("preprocess.encode_gpus > 0 but this Ray actor sees no CUDA device")
        self.spec = spec
        self.device = torch.device("cuda" if spec.use_gpu else "cpu")
        self.ae = load_autoencoder(
            spec.kind, spec.path, device=self.device, dtype=DTYPES[spec.dtype], pixel_patch=spec.pixel_patch
        )
        self._tune_codec()
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.budget = int(torch.cuda.mem_get_info(self.device)[0] * spec.memory_fraction) if self.cuda else 0
        self.per_clip = 0  # peak device bytes per clip in one call, measured on the first call
        self.cap = 0  # clips per call allowed by the memory budget (0 = not measured yet / no budget)

    def _tune_codec(self) -> None:
        net = getattr(self.ae, "vae", None)  # the diffusers module; the pixel codec has no weights
        if net is None:
            return
        if self.spec.channels_last:
            net.to(memory_format=torch.channels_last_3d)
        if self.spec.compile:
            net.encoder = torch.compile(net.encoder)

    # ------------------------------------------------------------------ micro-batches

    def _step(self, n: int) -> int:
        step = self.spec.batch_size if self.spec.batch_size > 0 else max(1, n)
        if self.cuda:
            step = 1 if self.per_clip == 0 else min(step, max(1, self.cap))  # first call: measure one clip
        return step

    def _take(self, batch: dict[str, np.ndarray], todo: list[int]) -> tuple[list[int], tuple[Tensor, Any, Tensor]]:
        """Pop the next micro-batch off `todo` and start its upload."""
        step = self._step(len(todo))
        group = todo[:step]
        del todo[:step]
        return group, self._upload(batch["frames"][group])

    def _upload(self, frames: np.ndarray) -> tuple[Tensor, Any, Tensor]:
        """Start the copy of a micro-batch's uint8 frames to the device; (device tensor, event, host tensor)."""
        host = torch.from_numpy(np.ascontiguousarray(frames))
        if not self.cuda:
            return host, None, host
        host = host.pin_memory()
        with torch.cuda.stream(self.copy_stream):
            dev = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return dev, done, host  # the pinned host tensor must live until the copy has finished

    def _encode(self, upload: tuple[Tensor, Any, Tensor], paths: Sequence[str]) -> Encoded:
        hit = [p for p in paths if os.path.basename(p) in self.spec.oom_names]
        if hit:
            raise RuntimeError(f"CUDA out of memory (fault encode.oom: {hit[0]})")
        frames, done, _ = upload
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            frames.record_stream(stream)  # allocated on the copy stream, used on this one
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        video = uint8_to_video(frames)
        if self.spec.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        out = encode_on_device(self.ae, video, self.spec.factors, self.spec.temporal_mode, self.spec.latent_dtype)
        if done is not None and self.per_clip == 0:
            self.per_clip = max(1, (torch.cuda.max_memory_allocated(self.device) - base) // len(paths))
            self.cap = max(1, self.budget // self.per_clip)
            log.info("encoder: %.2f GiB peak per clip, up to %d clips per call", self.per_clip / 2**30, self.cap)
        return out

    # ------------------------------------------------------------------ the batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in batch.items() if k != "frames"}
        n = len(batch["key"])
        levels = [np.zeros((n, *shape), dtype=np.float32) for shape in self.spec.level_shapes]
        moments = np.zeros((n, len(levels) + 1, 2, self.spec.level_shapes[0][0]), dtype=np.float64)
        reason = out["reason"] = np.array(batch["reason"], dtype=object)
        stage, detail = np.array(batch["stage"], dtype=object), np.array(batch["detail"], dtype=object)
        paths = [str(p) for p in batch["path"]]
        finite = np.ones(n, dtype=bool)
        todo = [int(i) for i in np.flatnonzero([r == "" for r in reason])]
        ahead = None  # (clip indices, upload) of the next micro-batch, copying while this one encodes
        while todo or ahead:
            group, upload = ahead if ahead else self._take(batch, todo)
            ahead = self._take(batch, todo) if todo else None
            try:
                self._store(self._encode(upload, [paths[i] for i in group]), group, levels, moments, finite)
            except Exception as exc:
                if self.cuda:
                    torch.cuda.empty_cache()  # after an out-of-memory error the next call gets a clean allocator
                    if "out of memory" in str(exc) and len(group) > 1:
                        self.cap = max(1, len(group) // 2)
                if len(group) == 1:
                    self._reject(paths[group[0]], group[0], exc, stage, reason, detail)
                    continue
                for i in group:  # one bad clip must not take the others with it
                    try:
                        one = self._encode(self._upload(batch["frames"][[i]]), [paths[i]])
                        self._store(one, [i], levels, moments, finite)
                    except Exception as exc1:
                        self._reject(paths[i], i, exc1, stage, reason, detail)
        for i in np.flatnonzero(~finite):
            if reason[i] == "":
                stage[i], reason[i] = "encode", "non-finite latents"
                detail[i] = f"{paths[i]}: {self.ae.id} produced NaN/inf latents"
        out.update(stage=stage, detail=detail, moments=moments, **{f"level_{s}": x for s, x in enumerate(levels)})
        return out

    def _store(
        self, enc: Encoded, group: Sequence[int], levels: list[np.ndarray], moments: np.ndarray, finite: np.ndarray
    ) -> None:
        for s, x in enumerate(enc.levels):
            levels[s][group] = x.numpy()
        moments[group] = enc.moments.numpy()
        finite[group] = enc.finite.numpy()

    def _reject(
        self, path: str, i: int, exc: Exception, stage: np.ndarray, reason: np.ndarray, detail: np.ndarray
    ) -> None:
        stage[i], reason[i] = "encode", "autoencoder error"
        detail[i] = f"{path}: {self.ae.id} raised {type(exc).__name__}: {exc}"
