"""What the run reports while it trains: metrics (accumulated on the device every micro-step,
reduced on log steps into metrics.jsonl, TensorBoard and the console), the progress bar, W&B,
EMA samples every `train.sample_every` steps, and the loss-curve PNG at the end.

    check_monitoring(cfg)                      before any process group (config errors first)
    monitor = RunMonitor(cfg, rank, ...)       once the process group exists
    monitor.metrics.add(...)                   every micro-step (device tensors, no host sync)
    monitor.after_step(step, state, skipped)   every optimizer step, on every rank (samples and
                                               the log-step reduction are collective)
    monitor.close()                            at the end (loss.png)
"""

from __future__ import annotations

import logging
import math
import resource
from pathlib import Path
from typing import Sequence

import torch

from dfm_video.config import Config
from dfm_video.models.flops import training_flops
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.train.engine import TrainState
from dfm_video.train.in_training_samples import InTrainingSampler
from dfm_video.train.metrics import MetricAccumulator, MetricWriter
from dfm_video.train.plots import plot_losses
from dfm_video.train.progress import TrainProgress
from dfm_video.train.wandb_logger import WandbLogger, check_wandb

log = logging.getLogger(__name__)


def check_monitoring(cfg: Config, source: str = "config") -> None:
    t = cfg.train
    if t.sample_every < 0:
        raise ValueError(f"{source}: key 'train.sample_every': expected >= 0 (0 = off), got {t.sample_every}")
    if t.sample_count < 1:
        raise ValueError(f"{source}: key 'train.sample_count': expected >= 1, got {t.sample_count}")
    check_wandb(cfg, source)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class RunMonitor:
    def __init__(
        self,
        cfg: Config,
        rank: int,
        world_size: int,
        device: torch.device,
        out_dir: str | Path,
        dataset_meta: dict,
        latent_shape: Sequence[int],
        start_step: int,
    ) -> None:
        self.cfg, self.rank, self.world_size, self.device = cfg, rank, world_size, device
        self.out_dir = Path(out_dir)
        self.metrics = MetricAccumulator(cfg.dfm.num_stages, device)
        tb_dir = str(self.out_dir / "tensorboard") if cfg.train.tensorboard else None
        self.writer = MetricWriter(tb_dir, rank, str(self.out_dir / "metrics.jsonl"))
        self.flops_per_sample = training_flops(cfg.model, cfg.dfm, latent_shape)
        finest_patch = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1]
        self.tokens_per_sample = math.prod(token_grid(latent_shape, finest_patch, cfg.dfm.temporal_mode))
        self.progress = TrainProgress(cfg.train.steps, start_step, rank, cfg.train.progress)
        self.wandb = WandbLogger(cfg, rank, self.out_dir)
        self.samples = InTrainingSampler(cfg, rank, self.out_dir, dataset_meta, device, self.writer.tb, self.wandb)

    def after_step(self, step: int, state: TrainState, nonfinite_skipped: int) -> None:
        """Progress; EMA samples when due (collective); on log steps the reduced metrics (collective)."""
        self.progress.step()
        if self.samples.due(step):
            self.samples.run(step, state.ema)
        t = self.cfg.train
        if step % t.log_every == 0 or step == t.steps:
            self.log(step, state, nonfinite_skipped)

    def log(self, step: int, state: TrainState, nonfinite_skipped: int) -> dict[str, float]:
        m = self.metrics.reduce()
        grad_norm = state.engine.get_global_grad_norm()
        m["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        m["lr"] = state.scheduler.get_last_lr()[0]
        m["perf/tokens_per_s"] = m["perf/samples_per_s"] * self.tokens_per_sample
        achieved = m["perf/samples_per_s"] * self.flops_per_sample / self.world_size
        m["perf/mfu(%)"] = 100.0 * achieved / (self.cfg.train.peak_tflops * 1e12)
        m["perf/mfu_vs_measured_peak(%)"] = 100.0 * achieved / (self.cfg.train.measured_peak_tflops * 1e12)
        m["mem/peak_gib"] = peak_memory_gib(self.device)
        m["train/nonfinite_skipped"] = float(nonfinite_skipped)
        self.writer.write(step, m)
        self.progress.log(m)
        self.wandb.log(step, m)
        self.metrics.reset()
        return m

    def close(self, plot: bool = True) -> None:
        """Close the writers; with `plot`, draw loss.png in the run directory (rank 0)."""
        self.writer.close()
        self.progress.close()
        self.wandb.close()
        jsonl = self.out_dir / "metrics.jsonl"
        if plot and self.rank == 0 and jsonl.is_file() and jsonl.stat().st_size:
            try:
                plot_losses({self.cfg.name: jsonl}, self.out_dir / "loss.png", title=f"{self.cfg.name}: training loss")
            except ValueError as exc:  # nothing to draw (e.g. every logged loss non-finite): say so, keep the run
                log.warning("no loss plot: %s", exc)
