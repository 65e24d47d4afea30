"""Non-finite steps: skipped by DeepSpeed, counted here, and fatal after `train.max_nonfinite` in a row.

A micro-batch whose loss is non-finite still goes through backward: its NaN gradients make
DeepSpeed's overflow check (ZeRO 1-3, and bf16) discard the whole optimizer step, scheduler step
included, exactly as for a finite loss whose gradients overflow. The trainer then asks DeepSpeed
whether the step was applied (and checks the global gradient norm), counts a skipped step, logs it
and leaves the EMA alone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after train.max_nonfinite consecutive skipped (non-finite) steps."""


class NonFiniteWeightsError(NonFiniteLossError):
    """Raised instead of saving a checkpoint whose weights hold NaN or inf (it would become `latest`)."""


def local_weights_finite(module: torch.nn.Module) -> bool:
    """Whether this rank's copy of the weights is finite: its ZeRO-3 partition, or the whole tensor."""
    for p in module.parameters():
        local = getattr(p, "ds_tensor", None)
        if not bool(torch.isfinite(local if local is not None else p.detach()).all()):
            return False
    return True


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
            log.warning("non-finite %s at step %d: optimizer step skipped (%d so far)", why, step, self.total)
        if self.run >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopping at step {step}: {self.run} consecutive skipped steps with non-finite loss or gradients "
                f"(train.max_nonfinite={self.max_consecutive})"
            )
        return True
