"""Stage-wise sampling schedule (DFM_METHOD.md section 5). Convention: t = 0 noise, t = 1 data.

Phase k (k = 1..S) spends `steps_per_stage[k-1]` Euler steps. The newest stage k moves on a
linear grid from 0 to tau_k (to 1 in the last phase). Every earlier stage j < k moves in
lock-step, covering the same fraction of its remaining distance as stage k:

    t_j = t_j(start of phase) + (1 - t_j(start of phase)) * t_k

For two stages this is the paper's schedule: phase 1 takes stage 1 from 0 to tau while stage 2
waits at 0; phase 2 takes stage 2 from 0 to 1 and stage 1 follows t_1 = tau + (1 - tau) * t_2.
For S >= 3 it is monotone non-decreasing in every stage by construction (the authors' released
3-stage schedule is not, and is not copied). S = 1 is the linear flow-matching grid.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def sampling_schedule(
    steps_per_stage: Sequence[int], tau: float | Sequence[float] = 0.9, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """t of every stage at every step: a (N + 1, S) tensor, N = sum(steps_per_stage).

    Row i holds the times before step i; row N is all ones. `tau` may be one value or one per
    stage transition (len S - 1).
    """
    steps = [int(n) for n in steps_per_stage]
    S = len(steps)
    if S < 1 or any(n < 1 for n in steps):
        raise ValueError(f"steps_per_stage must be a non-empty list of positive integers, got {list(steps_per_stage)}")
    taus = [float(tau)] * (S - 1) if isinstance(tau, (int, float)) else [float(v) for v in tau]
    if len(taus) != S - 1:
        raise ValueError(f"expected one tau or {S - 1} values (one per stage transition), got {len(taus)}")
    if any(not 0.0 < v <= 1.0 for v in taus):
        raise ValueError(f"tau must lie in (0, 1], got {taus}")
    rows = [torch.zeros(S, dtype=torch.float64)]
    for k in range(S):
        start = rows[-1].clone()
        end_k = 1.0 if k == S - 1 else taus[k]
        for i in range(1, steps[k] + 1):
            tk = end_k * i / steps[k]
            row = start.clone()
            row[:k] = start[:k] + (1.0 - start[:k]) * tk
            row[k] = tk
            rows.append(row)
    sched = torch.stack(rows)
    sched[-1] = 1.0  # exact ones despite rounding in the lock-step products
    return sched.to(dtype)


def schedule_activity(schedule: Tensor) -> Tensor:
    """(N, S) bool: stage s is active at step i once its phase has begun (it moved at or before i)."""
    moved = schedule[1:] > schedule[:-1]
    return torch.cumsum(moved.to(torch.int64), dim=0) > 0


def phase_ends(steps_per_stage: Sequence[int]) -> list[int]:
    """Index into the schedule's rows at which each stage's phase ends (stage k reaches tau_k)."""
    out, total = [], 0
    for n in steps_per_stage:
        total += int(n)
        out.append(total)
    return out
