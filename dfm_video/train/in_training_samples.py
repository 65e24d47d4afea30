"""EMA samples during training (`train.sample_every`): mp4 files and TensorBoard videos.

Every rank calls `run(step)` at the same step: under ZeRO-3 the EMA weights are partitioned and
gathering them is a collective (all ranks must take part or the job deadlocks); under ZeRO 0-2
every rank already holds the whole EMA and only rank 0 copies it. Rank 0 then builds a plain
(non-DeepSpeed) model from the config, loads the EMA weights and samples with the stage-wise
sampler of `dfm_video.sampling` (the config's sample.steps / tau / cfg_scale), the same labels and
the same noise seed every time, so successive videos show the model's progress, not new noise.
The other ranks go on to the next step and wait in its first collective.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from dfm_video.config import Config
from dfm_video.media import to_uint8
from dfm_video.models import build_model
from dfm_video.sampling import Generator, decode_latents, generate, write_outputs
from dfm_video.train.ema import EMA


def gif_bytes(frames: np.ndarray, fps: float) -> bytes:
    """(T, H, W, 3) uint8 -> animated GIF bytes (what TensorBoard's image plugin plays as video)."""
    imgs = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / max(fps, 1e-3)), loop=0)
    return buf.getvalue()


def add_tensorboard_video(tb: Any, tag: str, frames: np.ndarray, step: int, fps: float) -> None:
    """Write (T, H, W, 3) uint8 frames as a TensorBoard video summary (GIF, as `add_video` does,
    without its moviepy dependency)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    t, h, w, c = frames.shape
    image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif_bytes(frames, fps))
    tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    tb.flush()


class InTrainingSampler:
    def __init__(
        self,
        cfg: Config,
        rank: int,
        out_dir: str | Path,
        meta: dict,
        device: torch.device,
        tb: Any = None,
        wandb: Any = None,
    ) -> None:
        self.cfg, self.rank, self.meta, self.device = cfg, rank, meta, device
        self.out_dir = Path(out_dir) / "samples"
        self.tb, self.wandb = tb, wandb
        labels = list(meta.get("labels") or [])
        null = cfg.model.num_classes
        self.y = [i % len(labels) for i in range(cfg.train.sample_count)] if labels else [null] * cfg.train.sample_count

    def due(self, step: int) -> bool:
        every = self.cfg.train.sample_every
        return every > 0 and step % every == 0

    def run(self, step: int, ema: EMA) -> Optional[list[Path]]:
        """Collective under ZeRO-3: call on every rank. Returns the mp4 paths on rank 0."""
        weights = ema.full_state_dict() if ema.partitioned or self.rank == 0 else None
        if self.rank != 0:
            return None
        model = build_model(self.cfg.model, self.cfg.dfm)
        model.load_state_dict(weights)
        model.to(self.device).eval()
        gen = Generator(model=model, cfg=self.cfg, meta=self.meta, source=self.out_dir)
        sc = self.cfg.sample
        latents, _ = generate(
            gen,
            self.y,
            steps=list(sc.steps),
            tau=sc.tau,
            cfg_scale=sc.cfg_scale,
            cfg_interval=sc.cfg_interval,
            seed=sc.seed,
        )
        video = decode_latents(gen, latents).cpu()
        paths = write_outputs(gen, video, self.y, self.out_dir / f"step_{step:08d}")
        fps = float(self.meta.get("fps") or 8.0)
        frames = [to_uint8(v) for v in video]
        if self.tb is not None:
            add_tensorboard_video(self.tb, "samples/ema", np.concatenate(frames, axis=2), step, fps)  # side by side
        if self.wandb is not None:
            self.wandb.videos(step, "samples/ema", paths, [p.stem for p in paths])
        del model, gen
        return paths
