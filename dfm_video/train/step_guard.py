"""Per-step guards of the training loop: non-finite steps, and when to checkpoint (cadence, wall
clock, SIGTERM).

Non-finite steps. A micro-batch whose loss is non-finite still goes through backward: its NaN
gradients make DeepSpeed's overflow check (ZeRO 1-3, and bf16) discard the whole optimizer step,
scheduler step included, exactly as for a finite loss whose gradients overflow. The trainer then
asks DeepSpeed whether the step was applied (and checks the global gradient norm), counts a skipped
step, logs it and leaves the EMA alone. `train.max_nonfinite` consecutive skipped steps stop the run.

Checkpoint triggers are decided on rank 0's clock / signal flag and agreed with one small
all-reduce per step, so every rank enters the (collective) save together.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any, Optional

import torch
import torch.distributed as dist


class NonFiniteLossError(RuntimeError):
    """Raised after train.max_nonfinite consecutive skipped (non-finite) steps."""


def all_finite(loss: torch.Tensor) -> bool:
    """One scalar sync per micro-step: every rank must agree, or ZeRO's collectives diverge."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).view(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


class NonFiniteSteps:
    """Counts skipped steps; raises after `max_consecutive` in a row."""

    def __init__(self, max_consecutive: int, rank: int) -> None:
        self.max_consecutive = max_consecutive
        self.rank = rank
        self.run = 0
        self.total = 0

    def after_step(self, step: int, engine: Any, loss_was_nonfinite: bool) -> bool:
        """Call after engine.step() at the accumulation boundary; True when the step was skipped."""
        norm = engine.get_global_grad_norm()
        norm_bad = norm is not None and not math.isfinite(float(norm))
        skipped = loss_was_nonfinite or norm_bad or not engine.was_step_applied()
        if not skipped:
            self.run = 0
            return False
        self.run += 1
        self.total += 1
        if self.rank == 0:
            why = "loss" if loss_was_nonfinite else "gradients"
            print(
                f"warning: non-finite {why} at step {step}: optimizer step skipped ({self.total} so far)",
                file=sys.stderr,
                flush=True,
            )
        if self.run >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopping at step {step}: {self.run} consecutive skipped steps with non-finite loss or gradients "
                f"(train.max_nonfinite={self.max_consecutive})"
            )
        return True


class FaultInjection:
    """Test hook: non-finite losses or gradients at chosen steps (1-based, `fail_times` steps in a row)."""

    def __init__(self, loss_at: Optional[int], loss_times: int, grad_at: Optional[int]) -> None:
        self.loss_steps = set(range(loss_at, loss_at + loss_times)) if loss_at else set()
        self.grad_steps = {grad_at} if grad_at else set()

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.loss_steps else loss

    def outputs(self, step: int, pred: list[torch.Tensor]) -> list[torch.Tensor]:
        """Finite forward, infinite gradient: scale the incoming gradient of the model output by inf."""
        if step in self.grad_steps and pred[0].requires_grad:
            pred[0].register_hook(lambda g: g * float("inf"))
        return pred


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
