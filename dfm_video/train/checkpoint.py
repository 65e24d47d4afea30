"""The checkpoint manager: save, keep-last, resume planning, world-size conversion and the resume guard.

Layout (read by `dfm_video/checkpoints.py`, written here): `<run>/checkpoints/step_XXXXXXXX/` holds
DeepSpeed's model, optimizer and ZeRO files (every rank), plus, once, from rank 0, the EMA as whole
float32 tensors (`ema.safetensors`), `meta.json` (step, samples consumed, world size, ZeRO stage,
config, dataset metadata) and a `COMPLETE` marker; `<run>/checkpoints/latest` names the newest.

Saving is crash-safe: the folder is written as `step_XXXXXXXX.partial/`; rank 0 fsyncs every file,
writes `COMPLETE`, renames the folder, fsyncs the parent and rewrites `latest` atomically. `latest`
is the source of truth for `--resume auto`: a crash at any moment leaves the previous checkpoint
whole and a `.partial` folder the next save removes. Pruning renames a folder to `.deleting` before
removing it, so a crash mid-delete never leaves a half-deleted folder under a valid name.

Resuming has two halves. `plan` runs on every rank before any process group (config errors come
first): it picks the checkpoint (`latest`, a folder, or none), refuses a fresh run into a used
folder, compares the stored config with the new one key by key (the rules of what may change are
in config_changes.py) and decides whether DeepSpeed's state must go through a universal checkpoint
(another world size). `restore` loads it all after `deepspeed.initialize`. The run directory keeps
every config it ran with under `config_history/`.

Another world size goes through DeepSpeed's universal checkpoints: rank 0 converts the DeepSpeed
part with `python -m deepspeed.checkpoint.ds_to_universal` (a subprocess: the converter forks
worker pools, which a process holding a process group should not do) into
`<run>/checkpoints/.universal/<tag>/`, every rank loads it with `"load_universal": true`, and the
folder is removed after the load. The conversion runs in `convert`, before any process group exists (an
hours-long conversion under an open collective would hit its timeout), while the other ranks wait
for its `CONVERTED` marker on the shared folder; a finished conversion is kept until a load
succeeds, so a restart reuses it instead of converting again. The EMA needs no conversion (whole tensors) and the sample
counter is world-size independent, so the data position carries over.

Nothing written here is a pickle (meta.json is JSON, the EMA safetensors); DeepSpeed's own
`load_checkpoint` does unpickle its files: resume only from run folders you trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file

from dfm_video import faults
from dfm_video.checkpoints import (
    COMPLETE,
    EMA_FILE,
    META,
    complete_tags,
    latest_tag,
    read_ema,
    read_meta,
    step_of,
    tag_for,
)
from dfm_video.dir_lock import DirLock, LockHeld, describe
from dfm_video.train import state_dump
from dfm_video.train.config_changes import (
    apply_optim_changes,
    compare_configs,
    data_fingerprint,
    stored_fingerprint,
    with_fingerprint,
)
from dfm_video.train.durable import atomic_write, fsync_path, fsync_tree, remove_dir
from dfm_video.train.engine import TrainState
from dfm_video.train.nonfinite import NonFiniteWeightsError, local_weights_finite
from dfm_video.train.universal import (
    convert_to_universal,
    needs_universal,
    remove_universal,
    tree_bytes,
    universal_path,
    wait_for_conversion,
)

log = logging.getLogger(__name__)

# Everything a run writes into its folder (--overwrite removes all of it; an old W&B id would make the
# new run append to the old W&B run, whose metrics hide the new ones until it passes the old last step).
RUN_ARTIFACTS = (
    "checkpoints",
    "metrics.jsonl",
    "tensorboard",
    "export",
    "config_history",
    "config.yaml",
    "wandb_id.txt",
    "wandb",
    "samples",
    "loss.png",
)
LOCK_FILE = ".lock"  # held by global rank 0 for the whole run (dfm_video/dir_lock.py)
HYPERPARAMETERS = ("weight_decay", "betas", "eps")  # per param group, set from the config at start


# ---------------------------------------------------------------- resume planning (pure, no process group)


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


def has_run_artifacts(out_dir: Path) -> list[str]:
    return [n for n in RUN_ARTIFACTS if (out_dir / n).exists()]


def plan_start(
    cfg_dict: dict,
    fingerprint: str,
    resume: str,
    out_dir: Path,
    world_size: int,
    zero_stage: int,
    overwrite: bool = False,
    allow_change: Sequence[str] = (),
    num_samples: int = 0,
) -> StartPlan:
    """Decide where to start; ValueError (before any process group) for every refused case.
    `num_samples`: the data's size, to read a checkpoint's fingerprint in today's terms."""
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
        with_fingerprint(meta["config"], stored_fingerprint(meta, num_samples)),
        with_fingerprint(cfg_dict, fingerprint),
        allow_change,
        source=f"checkpoint {path}",
    )
    later = [t for t in complete_tags(ckpt_root) if t > path.name]
    if later:  # a rollback: say so, since these will be replaced as the run reaches their steps
        changes.append(f"note: {ckpt_root} holds later checkpoints ({', '.join(later)}) that this run will replace")
    return StartPlan(path, meta, needs_universal(meta, world_size, zero_stage), changes)


# ---------------------------------------------------------------- files: atomic writes, removal, pruning


def prune(root: Path, keep_last: int, just_written: str) -> list[str]:
    """Keep `just_written` and the newest keep_last - 1 complete checkpoints BEFORE it; returns the removed tags.

    Checkpoints with a later step (left by a run that was rolled back) are neither counted nor
    removed here: `latest` never names them, and a save at their step replaces them.
    """
    step = step_of(just_written)
    older = [t for t in complete_tags(root) if step_of(t) < step]
    doomed = older[: max(len(older) - (keep_last - 1), 0)]
    for t in doomed:
        remove_dir(root / t)
    for stale in list(root.glob("*.partial")) + list(root.glob("*.deleting")):
        if stale.name != just_written:
            shutil.rmtree(stale, ignore_errors=True)
    return doomed


def clear_run(out_dir: Path) -> list[str]:
    """--overwrite: remove an old run's files (each folder renamed to .deleting first)."""
    found = has_run_artifacts(out_dir)
    for n in found:
        p = out_dir / n
        remove_dir(p) if p.is_dir() else p.unlink()
    return found


def record_config(out_dir: Path, cfg_dict: dict, step: int, changes: list[str]) -> Path:
    """config.yaml is the current config; config_history/ keeps one file per start, with the changes."""
    hist = out_dir / "config_history"
    hist.mkdir(parents=True, exist_ok=True)
    n = len(list(hist.glob("*.yaml"))) + 1
    path = hist / f"{n:04d}_step{step:08d}.yaml"
    header = f"# started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} at step {step}\n"
    header += "".join(f"# changed: {c}\n" for c in changes)
    path.write_text(header + yaml.safe_dump(cfg_dict, sort_keys=False))
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    return path


# ---------------------------------------------------------------- collectives


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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


# ---------------------------------------------------------------- DeepSpeed state: save, load, convert


def save_checkpoint(engine: Any, root: Path, step: int, meta: dict, ema: Any, keep_last: int, rank: int) -> Path:
    """Write a complete checkpoint for `step` (collective: call on every rank). `meta` must be JSON-able.
    NonFiniteWeightsError, before anything is written, when any rank's weights are not finite.

    Fault `checkpoint.save_pause` = {"step": N, "seconds": S}: at the save of step N, rank 0 sleeps
    S seconds after every file is written and before `COMPLETE`, a window to SIGKILL a save in flight.
    """
    tag = tag_for(step)
    if not all_ranks_ok(local_weights_finite(engine.module)):
        # A checkpoint of NaN weights would become `latest` and pruning would delete the good ones.
        kept = latest_tag(root) if rank == 0 else None
        raise NonFiniteWeightsError(
            f"step {step}: the model weights hold NaN or inf; no checkpoint was written and "
            f"{root / 'latest'} still names {kept or 'nothing'}: resume from it (--resume auto), "
            "e.g. with a lower optim.lr or optim.grad_clip"
        )
    partial = root / (tag + ".partial")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(root), tag=partial.name, client_state={"step": step}, save_latest=False)
    ema_full = ema.gather_to_rank0()  # collective under ZeRO-3; {} off rank 0
    if rank == 0:
        save_file({k: v.contiguous() for k, v in ema_full.items()}, str(partial / EMA_FILE))
        (partial / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    del ema_full
    _barrier()
    if rank == 0:
        pause = faults.get("checkpoint.save_pause")
        if pause and int(pause["step"]) == step:
            time.sleep(float(pause["seconds"]))
        fsync_tree(partial)
        with open(partial / COMPLETE, "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(partial)
        if (root / tag).exists():  # an earlier timeline's checkpoint of the same step (after a rollback)
            remove_dir(root / tag)
        os.replace(partial, root / tag)
        fsync_path(root)
        atomic_write(root / "latest", tag + "\n")
        prune(root, keep_last, tag)
    _barrier()
    return root / tag


def load_engine_state(engine: Any, load_dir: Path, tag: str) -> None:
    """DeepSpeed's load (it unpickles: trusted folders only); ValueError instead of a None path."""
    load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {Path(load_dir) / tag}")


# ---------------------------------------------------------------- the manager


class CheckpointManager:
    """One run folder's checkpoints. The trainer's calls, in order:

        ckpt = CheckpointManager(out_dir, cfg_dict, dataset_meta, num_samples, keep_last=K, lr=LR)
        ckpt.plan(resume, world_size, zero_stage, ...)  every rank, before any process group
        ckpt.convert(rank)                              every rank, before any process group (world-size change)
        ckpt.open_run_dir(rank, world_size)             after init: the folder is shared by every rank
        ckpt.deepspeed_config(ds_config)                adds the universal-load setting when converting
        step, consumed = ckpt.restore(state)            after deepspeed.initialize: --overwrite, config_history,
                                                        the checkpoint's state; (0, 0) for a fresh run
        ckpt.save(state, step, samples_consumed, ...)   collective, at every checkpoint

    `num_samples` and `dataset_meta` make the data fingerprint a resume is checked against; `lr` is
    the configured base learning rate, which wins over the checkpoint's on restore (an unchanged
    config makes that a no-op; a changed one needs `--allow-change optim.lr`).

    Fault `train.dump_state` = DIR: after every save and every restore, the whole training state by
    parameter name (state_dump.py) is written to DIR/{saved,resumed}_XXXXXXXX.safetensors (+ .json).
    """

    def __init__(
        self, out_dir: Path, cfg_dict: dict, dataset_meta: dict, num_samples: int, *, keep_last: int, lr: float
    ) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / "checkpoints"
        self.cfg_dict, self.dataset_meta = cfg_dict, dataset_meta
        self.fingerprint = data_fingerprint(dataset_meta, num_samples)
        self.num_samples = num_samples
        self.keep_last, self.lr = keep_last, lr
        self.start = StartPlan()
        self.rank, self.world_size = 0, 1
        self.dump_dir = faults.get("train.dump_state")

    def plan(
        self,
        resume: str,
        world_size: int,
        zero_stage: int,
        overwrite: bool = False,
        allow_change: Sequence[str] = (),
    ) -> StartPlan:
        """Where the run starts (see `plan_start`); ValueError for every refused case."""
        self.start = plan_start(
            self.cfg_dict,
            self.fingerprint,
            resume,
            self.out_dir,
            world_size,
            zero_stage,
            overwrite=overwrite,
            allow_change=allow_change,
            num_samples=self.num_samples,
        )
        return self.start

    def convert(self, rank: int) -> None:
        """After `plan`, before any process group: for another world size rank 0 converts the
        checkpoint (a conversion of hours under an open collective would hit its timeout) while
        the others wait on the shared folder; nothing to do otherwise.

        Fault `checkpoint.crash_after_conversion` = true: SIGKILL rank 0 once the conversion is done
        (as a restart loop's attempt killed before its load would be)."""
        if not self.start.universal:
            return
        path, meta = self.start.checkpoint, self.start.meta
        dst = universal_path(self.root, path.name)
        if rank != 0:
            wait_for_conversion(path, dst)
            return
        log.info(
            "converting %s (world size %s, ZeRO-%s) to a universal checkpoint",
            path,
            meta["world_size"],
            meta["zero_stage"],
        )
        t0 = time.monotonic()
        if convert_to_universal(path, dst, int(meta["zero_stage"])):
            seconds, gb = time.monotonic() - t0, tree_bytes(path) / 1e9
            log.info("converted %.3f GB in %.1f s (%.0f s/GB) into %s", gb, seconds, seconds / max(gb, 1e-9), dst)
        else:
            log.info("reusing the universal checkpoint converted earlier in %s", dst)
        if faults.get("checkpoint.crash_after_conversion"):
            os.kill(os.getpid(), signal.SIGKILL)

    def open_run_dir(self, rank: int, world_size: int) -> None:
        """Collective: check the folder is shared by every rank. Nothing of an old run is touched here:
        `--overwrite` deletes it in `restore`, once the engine is built (every early failure leaves it whole)."""
        self.rank, self.world_size = rank, world_size
        held: Optional[str] = None
        if rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._lock = DirLock(self.out_dir / LOCK_FILE)
            try:
                stale = self._lock.acquire()
                if stale:
                    log.warning("%s: took over the lock of a trainer that died (%s)", self.out_dir, describe(stale))
            except LockHeld as exc:
                held = describe(exc.holder)
        if not all_ranks_ok(held is None):
            raise ValueError(
                f"train.output_dir={self.out_dir} is in use by another trainer: {held or 'see rank 0'} "
                f"(lock {self.out_dir / LOCK_FILE}). Two trainers would interleave saves and pruning: "
                "stop the other one (a requeued job's predecessor may still hang) or pick another train.output_dir"
            )
        check_shared_run_dir(self.out_dir, rank)

    def _begin(self) -> None:
        """Collective, after `deepspeed.initialize`: clear an overwritten run, record the config."""
        if self.rank == 0:
            if self.start.clear_first:
                log.info("--overwrite: removed %s from %s", ", ".join(clear_run(self.out_dir)), self.out_dir)
            record_config(self.out_dir, self.cfg_dict, self.start.step, self.start.changes)
        _barrier()

    def deepspeed_config(self, ds_config: dict) -> dict:
        """The DeepSpeed JSON, set to load a universal checkpoint when the plan converts one."""
        if self.start.universal:
            ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
        return ds_config

    def restore(self, state: TrainState) -> tuple[int, int]:
        """Load the planned checkpoint into engine, EMA and scheduler; returns (step, samples consumed).

        Call after the engine is built: a fresh `--overwrite` run deletes the old one only here."""
        self._begin()
        path = self.start.checkpoint
        if path is None:
            return 0, 0
        engine, plan = state.engine, self.start
        # The groups' hyperparameters come from the config (param_groups: decay / no decay), not from
        # the checkpoint: DeepSpeed 0.19.8's universal loader under ZeRO-3 gives every group the first
        # group's weight decay (measured: the no-decay group came back with 0.01). Re-applied below.
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        settings = [{k: g[k] for k in HYPERPARAMETERS if k in g} for g in inner.param_groups]
        if plan.universal:  # converted in `plan`, before the process group
            dst = universal_path(self.root, path.name)
            load_engine_state(engine, dst.parent, dst.name)
        else:
            load_engine_state(engine, path.parent, path.name)
        state.ema.load_full(read_ema(path))
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        if len(inner.param_groups) != len(settings):
            raise ValueError(
                f"{path}: the optimizer has {len(settings)} parameter groups, the checkpoint {len(inner.param_groups)}"
            )
        for group, keep in zip(inner.param_groups, settings):
            group.update(keep)
        apply_optim_changes(state.optimizer, state.scheduler, self.lr)
        all_ranks_ok(True)
        if plan.universal and self.rank == 0:
            remove_universal(self.root)
        if self.rank == 0:
            log.info("resumed from %s at step %d", path, plan.step)
            for c in plan.changes:
                log.warning("config change on resume: %s", c)
        self._dump(state, "resumed", plan.step)
        return plan.step, int(plan.meta["samples_consumed"])

    def data_resume(self) -> Optional[dict]:
        """The data position the planned checkpoint stores (per-bucket samples consumed, epoch unit), or
        for a checkpoint without one the micro batch its samples were consumed with; None at step 0."""
        meta = self.start.meta
        if not meta:
            return None
        if meta.get("data_position"):
            return meta["data_position"]
        return {"micro_batch": int(meta["config"]["distributed"]["micro_batch_size"])}

    def save(
        self,
        state: TrainState,
        step: int,
        samples_consumed: int,
        nonfinite_skipped: int,
        data_position: Optional[dict] = None,
    ) -> Path:
        """Write the checkpoint of `step` and prune to keep_last (collective: call on every rank).
        `data_position`: the sampler's `position(samples_consumed)`, so a resume with another micro
        batch continues every bucket exactly."""
        d = self.cfg_dict["distributed"]
        meta = {
            "step": step,
            "samples_consumed": samples_consumed,
            "data_position": data_position,
            "world_size": self.world_size,
            "zero_stage": d["zero_stage"],
            "precision": d["precision"],
            "config": self.cfg_dict,
            "dataset_meta": self.dataset_meta,
            "data_fingerprint": self.fingerprint,
            "lr": state.scheduler.get_last_lr()[0],
            "nonfinite_skipped": nonfinite_skipped,
        }
        path = save_checkpoint(state.engine, self.root, step, meta, state.ema, self.keep_last, self.rank)
        self._dump(state, "saved", step)
        return path

    def _dump(self, state: TrainState, kind: str, step: int) -> None:
        if self.dump_dir:
            path = Path(self.dump_dir) / f"{kind}_{step:08d}.safetensors"
            state_dump.dump(state.engine, state.ema, state.scheduler, path, self.rank)
