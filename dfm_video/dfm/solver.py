"""Stage-wise Euler ODE solver with classifier-free guidance. Convention: t = 0 noise, t = 1 data.

One network call per step returns every stage's velocity; each active stage steps with its own
dt taken from the schedule (a (N + 1, S) tensor from `sampling_schedule`). A stage that has not
started yet keeps its initial noise, is reported inactive to the network (which masks it) and
receives t = 0.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dfm_video.dfm.schedule import schedule_activity

# velocity_fn(x_levels, t (B, S), active (B, S) bool, y (B,)) -> velocity per level
VelocityFn = Callable[[list[Tensor], Tensor, Tensor, Tensor], Sequence[Tensor]]
# on_stage_done(stage index 0-based, levels at that moment, step index)
StageCallback = Callable[[int, list[Tensor], int], None]


def guided_stages(
    active: Tensor, t_row: Tensor, cfg_scale: float, cfg_interval: Optional[tuple[float, float]]
) -> list[bool]:
    """Which stages are guided at one step: active ones whose t lies in `cfg_interval` (if given)."""
    return [
        cfg_scale != 1.0
        and bool(active[s])
        and (cfg_interval is None or cfg_interval[0] <= float(t_row[s]) <= cfg_interval[1])
        for s in range(active.shape[0])
    ]


def count_nfe(schedule: Tensor, cfg_scale: float = 1.0, cfg_interval: Optional[tuple[float, float]] = None) -> int:
    """Network evaluations `euler_sample` spends on one sample: 1 per step, 2 on steps where any
    stage is guided (the conditional and unconditional halves of the batched call)."""
    sched = schedule.to(torch.float64)
    activity = schedule_activity(sched)
    return sum(
        2 if any(guided_stages(activity[i], sched[i], cfg_scale, cfg_interval)) else 1
        for i in range(sched.shape[0] - 1)
    )


def guided(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: v_u + scale * (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


@torch.no_grad()
def euler_sample(
    velocity_fn: VelocityFn,
    noise: Sequence[Tensor],
    schedule: Tensor,
    y: Tensor,
    *,
    cfg_scale: float = 1.0,
    cfg_interval: Optional[tuple[float, float]] = None,
    null_label: Optional[int] = None,
    on_stage_done: Optional[StageCallback] = None,
    on_stage_clean: Optional[StageCallback] = None,
    progress: bool = False,
) -> list[Tensor]:
    """Integrate every stage from its noise to data along `schedule`; returns the final levels.

    noise: S tensors (B, C, T_s, H_s, W_s), each stage's x at t = 0. y: (B,) labels.
    Guidance (cfg_scale != 1) batches conditional and unconditional (label `null_label`) inputs in
    one call, and guides a stage only while its own t lies in `cfg_interval` (inclusive) if given.
    `on_stage_done(k, levels, step)` fires when stage k reaches its end of phase (tau, or 1 at the end).
    `on_stage_clean(k, estimates, step)` fires at the same moments with the clean estimates
    x_j + (1 - t_j) v_j of stages j <= k (what previews decode: at tau the latent itself is still
    noisy). v_j is the velocity of the step that starts the next phase, evaluated at exactly that
    state, so it costs no extra network call; at the end t = 1 and the estimate is x itself.
    """
    S = len(noise)
    if schedule.dim() != 2 or schedule.shape[1] != S:
        raise ValueError(f"schedule has shape {tuple(schedule.shape)}, expected (N + 1, {S}) for {S} stages")
    guide = cfg_scale != 1.0
    if guide and null_label is None:
        raise ValueError("classifier-free guidance needs the null label (the model's num_classes)")
    B = noise[0].shape[0]
    device = noise[0].device
    x = [n.clone() for n in noise]
    sched = schedule.to(torch.float64)
    activity = schedule_activity(sched)  # (N, S)
    null = torch.full_like(y, null_label) if guide else None
    started = torch.zeros(S, dtype=torch.bool)
    for i in tqdm(range(sched.shape[0] - 1), desc="sampling", disable=not progress, leave=False):
        act = activity[i]
        newly = act & ~started
        for k in range(S):
            # a stage starting now means every earlier unfinished stage just reached its tau
            if bool(newly[k]) and k > 0 and on_stage_done is not None:
                on_stage_done(k - 1, [v.clone() for v in x], i)
        started |= act
        t_row = sched[i]
        t = t_row.to(device=device, dtype=torch.float32).expand(B, S)
        active = act.to(device).expand(B, S)
        guide_stage = guided_stages(act, t_row, cfg_scale, cfg_interval)
        if any(guide_stage):
            out = velocity_fn(
                [torch.cat([v, v]) for v in x], torch.cat([t, t]), torch.cat([active, active]), torch.cat([y, null])
            )
            v_all = [guided(o[:B], o[B:], cfg_scale) if guide_stage[s] else o[:B] for s, o in enumerate(out)]
        else:
            v_all = list(velocity_fn(x, t, active, y))
        if len(v_all) != S:
            raise ValueError(f"velocity_fn returned {len(v_all)} tensors for {S} stages")
        if on_stage_clean is not None:
            for k in range(1, S):
                if bool(newly[k]):
                    on_stage_clean(k - 1, [x[j] + float(1.0 - t_row[j]) * v_all[j].to(x[j].dtype) for j in range(k)], i)
        for s in range(S):
            if not bool(act[s]):
                continue
            dt = float(sched[i + 1, s] - sched[i, s])
            x[s] = x[s] + dt * v_all[s].to(x[s].dtype)
    if on_stage_done is not None:
        on_stage_done(S - 1, [v.clone() for v in x], sched.shape[0] - 1)
    if on_stage_clean is not None:
        on_stage_clean(S - 1, [v.clone() for v in x], sched.shape[0] - 1)
    return x
