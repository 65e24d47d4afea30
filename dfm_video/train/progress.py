"""Training progress bar on rank 0: steps done / total, rate, ETA and the last logged losses.

The bar never reads device tensors: its loss figures come from the metrics already reduced on log
steps, so it adds no host sync. Other ranks get a disabled bar (no output).
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from tqdm.auto import tqdm


class TrainProgress:
    """A tqdm bar on a terminal. Elsewhere (log files, pdsh or ssh launchers, captured output) a bar's
    carriage returns would glue it to the metric lines, so rank 0 prints a plain progress line with
    the ETA on every log step instead."""

    def __init__(self, total: int, start: int, rank: int, enabled: bool = True) -> None:
        self.active = rank == 0 and enabled
        self.tty = sys.stdout.isatty()
        self.total, self.start, self.done, self.t0 = total, start, 0, time.perf_counter()
        self.bar = tqdm(
            total=total,
            initial=start,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stdout,
            disable=not (self.active and self.tty),
            mininterval=0.5,
        )

    def step(self) -> None:
        self.bar.update(1)
        self.done += 1

    def log(self, metrics: dict[str, float]) -> None:
        shown = {k.split("/", 1)[1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith("loss/")}
        if self.tty:
            self.bar.set_postfix(shown, refresh=False)
        elif self.active and self.done:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            left = (self.total - self.start - self.done) / rate
            write_line(f"train: {self.start + self.done}/{self.total} steps, {rate:.3g} steps/s, ETA {_hms(left)}")

    def close(self) -> None:
        self.bar.close()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def write_line(text: str, file: Optional[object] = None) -> None:
    """Print a line without breaking an active progress bar."""
    tqdm.write(text, file=file or sys.stdout)
