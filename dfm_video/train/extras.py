"""What the trainer does around its loop besides training: progress bar, in-training samples,
W&B, and the loss-curve PNG at the end. The trainer calls four hooks; each is cheap when off.

    check_extras(cfg)                       before any process group (config errors first)
    extras = RunExtras(cfg, rank, ...)      after the metric writer exists
    extras.after_step(step, ema)            every optimizer step, on every rank (samples are collective)
    extras.after_log(step, metrics)         on log steps
    extras.close()                          after the metric writer is closed
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from dfm_video.config import Config
from dfm_video.train.ema import EMA
from dfm_video.train.in_training_samples import InTrainingSampler
from dfm_video.train.plots import plot_losses
from dfm_video.train.progress import TrainProgress
from dfm_video.train.wandb_logger import WandbLogger, check_wandb


def check_extras(cfg: Config, source: str = "config") -> None:
    t = cfg.train
    if t.sample_every < 0:
        raise ValueError(f"{source}: key 'train.sample_every': expected >= 0 (0 = off), got {t.sample_every}")
    if t.sample_count < 1:
        raise ValueError(f"{source}: key 'train.sample_count': expected >= 1, got {t.sample_count}")
    check_wandb(cfg, source)


class RunExtras:
    def __init__(
        self, cfg: Config, rank: int, out_dir: str | Path, meta: dict, device: torch.device, tb: Any, start_step: int
    ) -> None:
        self.cfg, self.rank, self.out_dir = cfg, rank, Path(out_dir)
        self.progress = TrainProgress(cfg.train.steps, start_step, rank, cfg.train.progress)
        self.wandb = WandbLogger(cfg, rank, self.out_dir)
        self.samples = InTrainingSampler(cfg, rank, self.out_dir, meta, device, tb, self.wandb)

    def after_step(self, step: int, ema: EMA) -> None:
        self.progress.step()
        if self.samples.due(step):
            self.samples.run(step, ema)

    def after_log(self, step: int, metrics: dict[str, float]) -> None:
        self.progress.log(metrics)
        self.wandb.log(step, metrics)

    def close(self) -> None:
        self.progress.close()
        self.wandb.close()
        jsonl = self.out_dir / "metrics.jsonl"
        if self.rank == 0 and jsonl.is_file() and jsonl.stat().st_size:
            try:
                plot_losses({self.cfg.name: jsonl}, self.out_dir / "loss.png", title=f"{self.cfg.name}: training loss")
            except ValueError as exc:  # nothing to draw (e.g. every logged loss non-finite): say so, keep the run
                print(f"note: no loss plot: {exc}", file=sys.stderr)
