"""The generator: load EMA weights, pick labels, integrate the pyramid stage by stage, decode, write.

`load_generator` builds the model from the resolved config saved with the weights (an export, a
complete checkpoint of any ZeRO stage, or a run directory holding either) and loads the EMA into
it. `generate` integrates the levels coarse to fine with the Euler solver of `dfm_video.dfm`,
undoes the per-level standardisation and recomposes the pyramid; `decode_latents` turns the
latents into video with the autoencoder the data was encoded with. Same seed, same output.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from dfm_video.checkpoints import read_weights, resolve_weights_source, weights_step
from dfm_video.config import Config
from dfm_video.dfm import LevelStats, destandardize, euler_sample, level_shapes, recompose, sampling_schedule
from dfm_video.media import to_uint8, write_mp4, write_png
from dfm_video.models import DiT3D, build_model
from dfm_video.sampling.codec import codec_for, resolve_codec, weights_digest
from dfm_video.sampling.cuda_graph import GraphedForward
from dfm_video.sampling.plan import sample_noise
from dfm_video.weights import check_state_dict


@dataclass
class Generator:
    """A loaded model plus everything needed to turn its levels into video."""

    model: DiT3D
    cfg: Config
    meta: dict[str, Any]
    source: Path
    weights_sha256: str = ""
    """Digest of the loaded weights (names, dtypes, shapes, bytes): the same for an export and its checkpoint."""
    step: int = 0
    """The training step of the loaded weights."""
    graphed: Optional[GraphedForward] = field(default=None, repr=False, compare=False)
    """The model's CUDA-graph replays (`sample.cuda_graphs`), kept across `generate` calls."""

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])


def load_generator(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autoencoder_path: Optional[str] = None,
) -> Generator:
    """Build the model from the saved resolved config and load the EMA weights into it.

    The autoencoder is looked up at `autoencoder_path`, else in the export's bundled copy, else at
    the path recorded at preprocessing time (dfm_video.sampling.codec)."""
    src = resolve_weights_source(path)
    weights, cfg, meta, partitioned = read_weights(src)
    model = build_model(cfg.model, cfg.dfm)
    state = model.state_dict()
    if partitioned:  # ZeRO-3 EMA: flat concatenation of rank partitions (padded at the end)
        weights = {k: v[: state[k].numel()].view(state[k].shape) for k, v in weights.items() if k in state}
    check_state_dict(state, weights, f"{src} (weights vs the model built from its config)")
    model.load_state_dict(weights)
    model.to(device=device, dtype=dtype).eval()
    meta = dict(meta, autoencoder=resolve_codec(meta["autoencoder"], src, autoencoder_path))
    return Generator(
        model=model, cfg=cfg, meta=meta, source=src, weights_sha256=weights_digest(weights), step=weights_step(src)
    )


def resolve_labels(gen: Generator, label: Optional[str], class_id: Optional[int], num: int) -> list[int]:
    """Class ids for `num` samples: one label, one id, or (neither) cycling through all labels."""
    labels = gen.labels
    if label is not None and class_id is not None:
        raise ValueError("give --label or --class-id, not both")
    if label is not None:
        if label not in labels:
            close = difflib.get_close_matches(label, labels, n=5, cutoff=0.4)
            hint = (
                f"closest: {', '.join(repr(c) for c in close)}"
                if close
                else f"valid labels include {', '.join(repr(c) for c in labels[:5])}"
            )
            raise ValueError(f"--label {label!r} is not a label of this model ({len(labels)} labels); {hint}")
        return [labels.index(label)] * num
    if class_id is not None:
        if not 0 <= class_id < gen.model.null_class:
            raise ValueError(
                f"--class-id {class_id} is out of range: this model has classes 0..{gen.model.null_class - 1}"
            )
        return [class_id] * num
    if not labels:
        return [gen.model.null_class] * num  # an unlabelled dataset: unconditional samples
    return [i % len(labels) for i in range(num)]


@torch.no_grad()
def generate(
    gen: Generator,
    y: Sequence[int],
    *,
    steps: Sequence[int],
    tau: float,
    cfg_scale: float = 1.0,
    cfg_interval: Optional[tuple[float, float]] = None,
    seed: int = 0,
    previews: bool = False,
    progress: bool = False,
    indices: Optional[Sequence[int]] = None,
    cuda_graphs: Optional[bool] = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Sample latents (B, C, T, H, W) (destandardised, recomposed) and, if asked, per-stage previews.

    With `indices`, row b's noise comes from (seed, indices[b]) alone, so a sample does not depend
    on which batch or rank made it; without, one generator seeded with `seed` draws the batch.
    `cuda_graphs` (default `sample.cuda_graphs` of the generator's config) replays each network call
    as a CUDA graph (dfm_video/sampling/cuda_graph.py); compiled blocks follow `model.compile`."""
    model, cfg, meta = gen.model, gen.cfg, gen.meta
    S = cfg.dfm.num_stages
    if len(steps) != S:
        raise ValueError(f"--steps needs one count per stage ({S}), got {list(steps)}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    C, T, H, W = meta["latent_shape"]
    factors = meta.get("factors", cfg.dfm.factors)  # a T = 1 bucket of a mixed run skips temporal factors
    shapes = level_shapes((T, H, W), factors, cfg.dfm.temporal_mode)
    if indices is not None:
        if len(indices) != len(y):
            raise ValueError(f"{len(indices)} sample indices for {len(y)} labels")
        noise = [n.to(device) for n in sample_noise(seed, indices, C, shapes)]
    else:
        g = torch.Generator().manual_seed(seed)  # CPU noise: the same seed gives the same video on any device
        noise = [torch.randn(len(y), C, *s, generator=g).to(device) for s in shapes]
    stats = LevelStats.from_dict(meta["stats"]) if meta.get("stats") else None
    preview_latents: dict[int, Tensor] = {}

    def on_stage_done(k: int, levels: list[Tensor], step: int) -> None:
        if previews and k < S - 1:
            lv = levels[: k + 1]
            if stats is not None:
                lv = destandardize(lv, LevelStats(stats.mean[: k + 1], stats.std[: k + 1]))
            preview_latents[k] = recompose(lv, factors[:k], cfg.dfm.temporal_mode)

    forward = model
    if cfg.sample.cuda_graphs if cuda_graphs is None else cuda_graphs:
        if gen.graphed is None:
            gen.graphed = GraphedForward(model, device)
        forward = gen.graphed

    def velocity(x: list[Tensor], t: Tensor, active: Tensor, labels: Tensor) -> list[Tensor]:
        return [v.float() for v in forward([v.to(dtype) for v in x], t, active, labels)]

    levels = euler_sample(
        velocity,
        noise,
        sampling_schedule(steps, tau),
        torch.tensor(list(y), dtype=torch.long, device=device),
        cfg_scale=cfg_scale,
        cfg_interval=cfg_interval,
        null_label=model.null_class,
        on_stage_clean=on_stage_done,  # previews decode the clean estimate, not the noisy latent
        progress=progress,
    )
    if stats is not None:
        levels = destandardize(levels, stats)
    return recompose(levels, factors, cfg.dfm.temporal_mode), preview_latents


def decode_latents(gen: Generator, latents: Tensor) -> Tensor:
    """Latents (B, C, T, H, W) -> video (B, 3, F, H', W') in [-1, 1] with the data's autoencoder."""
    return codec_for(gen.meta["autoencoder"], latents.device).decode(latents.float())


def write_outputs(gen: Generator, video: Tensor, y: Sequence[int], out: Path, prefix: str = "sample") -> list[Path]:
    """One mp4 per sample (PNG when the model makes single frames)."""
    fps = float(gen.meta.get("fps") or 8.0)
    names = gen.labels
    paths = []
    for i, v in enumerate(video):
        frames = to_uint8(v)
        tag = names[y[i]].replace("/", "_").replace(" ", "_") if y[i] < len(names) else "uncond"
        stem = out / f"{prefix}_{i:03d}_{tag}"
        if frames.shape[0] == 1:
            paths.append(write_png(stem.with_suffix(".png"), frames[0]))
        else:
            paths.append(write_mp4(stem.with_suffix(".mp4"), frames, fps))
    return paths
