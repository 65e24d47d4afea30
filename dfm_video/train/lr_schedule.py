"""Learning-rate shape: linear warmup from 0, then constant or cosine down to min_lr_ratio."""

from __future__ import annotations

import math
from typing import Callable

from dfm_video.config import OptimConfig


def lr_multiplier(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """f(step) -> multiplier of optim.lr, for torch.optim.lr_scheduler.LambdaLR (step = optimizer steps done)."""
    warmup = optim.warmup_steps

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
