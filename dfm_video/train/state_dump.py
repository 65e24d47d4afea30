"""The whole training state by parameter name, independent of world size and ZeRO stage: fp32
master weights, Adam moments, EMA, LR. Used to check that a resume (on any world size) restores
exactly what was saved: the tests (fault `train.dump_state`, read by the checkpoint manager, dumps
after every save and after a resume) and benchmarks/bench_deepspeed.py's round trip on the GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def full_state(engine: Any, ema: Any) -> dict[str, torch.Tensor]:
    """Collective under ZeRO-3 (call on every rank); whole tensors on CPU, on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    opt = engine.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO 1-2 link each parameter to its optimizer-state fragment lazily, at the first step, and
        # never again: after a load (new state tensors) or before any step the links are stale or
        # missing. Re-link so the moments read here are the ones the optimizer will use.
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()
    out: dict[str, torch.Tensor] = {}
    for name, p in engine.module.named_parameters():
        out[f"fp32/{name}"] = safe_get_full_fp32_param(p).detach().float().cpu().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}/{name}"] = safe_get_full_optimizer_state(p, key).detach().float().cpu().clone()
    for name, t in ema.full_state_dict().items():
        out[f"ema/{name}"] = t.cpu()
    return out


def dump(engine: Any, ema: Any, scheduler: Any, path: Path, rank: int) -> None:
    state = full_state(engine, ema)
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "lr": scheduler.get_last_lr(),
                    "param_groups": param_group_settings(engine),
                    "adam_steps": adam_steps(engine),
                }
            )
        )


def param_group_settings(engine: Any) -> list[dict[str, Any]]:
    """Every optimizer param group's hyperparameters (weight decay, betas, ...) without the tensors:
    a resume must restore them too (the weight-decay groups differ)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # ZeRO wraps the client AdamW
    return [
        {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in g.items()
            if k != "params" and not torch.is_tensor(v) and isinstance(v, (int, float, bool, str, tuple, type(None)))
        }
        for g in inner.param_groups
    ]


def adam_steps(engine: Any) -> list[float]:
    """The distinct Adam step counters of the optimizer state (bias correction uses them)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    steps = {float(st["step"]) for st in inner.state.values() if "step" in st}
    return sorted(steps)
