"""Where a run starts: plan the resume before any process group, restore after the engine exists.

`plan_start` runs on every rank before `init_distributed` (config errors must come first): it
picks the checkpoint (`latest` for `--resume auto`, a folder, or none), refuses a fresh run into a
used folder, compares the stored config with the new one (resume_guard.py) and decides whether the
DeepSpeed state must go through a universal checkpoint (another world size or ZeRO stage).
`restore` loads it all after `deepspeed.initialize`.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from dfm_video.checkpoints import complete_tags, latest_tag, read_ema, read_meta
from dfm_video.train.checkpoint import load_engine_state
from dfm_video.train.resume_guard import apply_optim_changes, compare_configs, has_run_artifacts
from dfm_video.train.universal import convert_to_universal, needs_universal, remove_universal, universal_path


@dataclass
class StartPlan:
    """What `train` starts from. `checkpoint` None = step 0."""

    checkpoint: Optional[Path] = None
    meta: dict = field(default_factory=dict)
    universal: bool = False
    changes: list[str] = field(default_factory=list)
    clear_first: bool = False  # --resume none --overwrite into a used folder

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def with_fingerprint(cfg_dict: dict, fingerprint: str) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    out.setdefault("data", {})["fingerprint"] = fingerprint
    return out


def plan_start(
    cfg_dict: dict,
    fingerprint: str,
    resume: str,
    out_dir: Path,
    world_size: int,
    zero_stage: int,
    overwrite: bool = False,
    allow_change: Sequence[str] = (),
) -> StartPlan:
    """Decide where to start; ValueError (before any process group) for every refused case."""
    ckpt_root = out_dir / "checkpoints"
    if resume in ("none", ""):
        used = has_run_artifacts(out_dir)
        if used and not overwrite:
            raise ValueError(
                f"train.output_dir={out_dir} already holds a run "
                f"({', '.join(used)}); --resume none would mix two runs there. "
                "Resume it (--resume auto), pick another train.output_dir, or pass --overwrite to delete it"
            )
        return StartPlan(clear_first=bool(used))
    if overwrite:
        raise ValueError("--overwrite only goes with --resume none")
    if resume == "auto":
        tag = latest_tag(ckpt_root)
        if tag is None:
            return StartPlan()
        path = ckpt_root / tag
    else:
        path = Path(resume)
    meta = read_meta(path)
    if int(meta["zero_stage"]) != zero_stage:
        # Measured with DeepSpeed 0.19.8: a universal checkpoint of a ZeRO-3 run does not load under
        # ZeRO-2 (the loader looks for model-states files the other stage names differently).
        raise ValueError(
            f"checkpoint {path} was written under ZeRO-{meta['zero_stage']}, "
            f"this run uses distributed.zero_stage={zero_stage}: "
            "changing the ZeRO stage on resume is not supported; "
            f"resume with distributed.zero_stage={meta['zero_stage']} "
            "(the world size may change)"
        )
    changes = compare_configs(
        with_fingerprint(meta["config"], meta.get("data_fingerprint", "<absent>")),
        with_fingerprint(cfg_dict, fingerprint),
        allow_change,
        source=f"checkpoint {path}",
    )
    later = [t for t in _tags(ckpt_root) if t > path.name]
    if later:  # a rollback: say so, since these will be replaced as the run reaches their steps
        changes.append(f"note: {ckpt_root} holds later checkpoints ({', '.join(later)}) that this run will replace")
    return StartPlan(path, meta, needs_universal(meta, world_size, zero_stage), changes)


def _tags(root: Path) -> list[str]:

    return complete_tags(root)


HYPERPARAMETERS = ("weight_decay", "betas", "eps")  # per group, set from the config at start


def restore(
    plan: StartPlan, engine: Any, ema: Any, optimizer: Any, scheduler: Any, ckpt_root: Path, lr: float, rank: int
) -> tuple[int, int]:
    """Load the planned checkpoint into engine, EMA and scheduler; returns (step, samples consumed)."""
    path = plan.checkpoint
    assert path is not None
    # The groups' hyperparameters come from the config (param_groups: decay / no decay), not from
    # the checkpoint: DeepSpeed 0.19.8's universal loader under ZeRO-3 gives every group the first
    # group's weight decay (measured: the no-decay group came back with 0.01). Re-applied below.
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    settings = [{k: g[k] for k in HYPERPARAMETERS if k in g} for g in inner.param_groups]
    if plan.universal:
        dst = universal_path(ckpt_root, path.name)
        error: Optional[Exception] = None
        if rank == 0:
            print(
                f"converting {path} (world size {plan.meta['world_size']}, ZeRO-{plan.meta['zero_stage']}) "
                "to a universal checkpoint",
                flush=True,
            )
            try:
                convert_to_universal(path, dst, int(plan.meta["zero_stage"]))
            except Exception as exc:  # every rank must learn of it, or the others wait forever
                error = exc
        if not all_ranks_ok(error is None):
            raise (
                error if error is not None else ValueError(f"rank 0 could not convert {path} to a universal checkpoint")
            )
        load_engine_state(engine, dst.parent, dst.name)
    else:
        load_engine_state(engine, path.parent, path.name)
    ema.load_full(read_ema(path))
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if len(inner.param_groups) != len(settings):
        raise ValueError(
            f"{path}: the optimizer has {len(settings)} parameter groups, the checkpoint {len(inner.param_groups)}"
        )
    for group, keep in zip(inner.param_groups, settings):
        group.update(keep)
    apply_optim_changes(optimizer, scheduler, lr)
    all_ranks_ok(True)
    if plan.universal and rank == 0:
        remove_universal(ckpt_root)
    if rank == 0:
        print(f"resumed from {path} at step {plan.step}", flush=True)
        for c in plan.changes:
            print(f"config change on resume: {c}", file=sys.stderr, flush=True)
    return plan.step, int(plan.meta["samples_consumed"])


def collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU ones."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks_ok(ok: bool) -> bool:
    """True when every rank passes True (a collective and a barrier in one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def check_shared_run_dir(out_dir: Path, rank: int) -> None:
    """Rank 0 writes a fresh token into the run folder; every rank must read the same one back, so
    a multi-node run whose output_dir is not one shared folder stops with a clear message (collective)."""
    token_file = out_dir / ".run_token"
    token = [uuid.uuid4().hex if rank == 0 else None]
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        token_file.write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    dist.barrier()
    try:
        seen = token_file.read_text().strip()
    except OSError:
        seen = "<missing>"
    ok = torch.tensor([1.0 if seen == token[0] else 0.0], device=collective_device())
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        raise ValueError(
            f"train.output_dir={out_dir} is not the same folder on every rank (rank {rank} reads token {seen!r}, "
            f"rank 0 wrote {token[0]!r}): checkpoints need one folder shared by all nodes (see docs/training.md)"
        )
