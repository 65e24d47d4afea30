"""Training progress bar on rank 0: steps done / total, rate, ETA and the last logged losses.

The bar never reads device tensors: its loss figures come from the metrics already reduced on log
steps, so it adds no host sync. Other ranks get a disabled bar (no output).
"""

from __future__ import annotations

import sys
from typing import Optional

from tqdm.auto import tqdm


class TrainProgress:
    def __init__(self, total: int, start: int, rank: int, enabled: bool = True) -> None:
        self.bar = tqdm(
            total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stdout,
            disable=rank != 0 or not enabled, mininterval=0.5 if sys.stdout.isatty() else 10.0,
        )

    def step(self) -> None:
        self.bar.update(1)

    def log(self, metrics: dict[str, float]) -> None:
        shown = {k.split("/", 1)[1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith("loss/")}
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


def write_line(text: str, file: Optional[object] = None) -> None:
    """Print a line without breaking an active progress bar."""
    tqdm.write(text, file=file or sys.stdout)
