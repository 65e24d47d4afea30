"""When to checkpoint: every `train.ckpt_every` steps, every `train.ckpt_every_minutes`, the last
step, and on SIGTERM (save, then stop).

The decision is taken on each rank's clock / signal flag and agreed with one small all-reduce per
step, so every rank enters the (collective) save together.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import torch
import torch.distributed as dist


class CheckpointTrigger:
    """Step cadence, wall-clock cadence and SIGTERM, agreed across ranks."""

    def __init__(self, every_steps: int, every_minutes: float, device: torch.device) -> None:
        self.every_steps = every_steps
        self.every_s = every_minutes * 60.0
        self.device = device
        self.last = time.monotonic()
        self.sigterm = False
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Only set a flag: the save is collective and must happen between steps on every rank.
        self.sigterm = True

    def stop_requested(self) -> bool:
        """Whether any rank got SIGTERM (one tiny all-reduce): asked between micro-steps, so a long
        accumulation step does not delay the save past the scheduler's kill."""
        flag = torch.tensor([float(self.sigterm)], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0] > 0)

    def due(self, step: int, last_step: int) -> tuple[bool, bool]:
        """(save now, stop after saving). One tiny all-reduce: every rank decides the same."""
        timed = self.every_s > 0 and time.monotonic() - self.last >= self.every_s
        flags = torch.tensor([float(self.sigterm), float(timed)], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, timed = bool(flags[0] > 0), bool(flags[1] > 0)
        save = stop or timed or step % self.every_steps == 0 or step == last_step
        return save, stop

    def saved(self) -> None:
        self.last = time.monotonic()

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
