"""Crash-safe checkpoints: `<run>/checkpoints/step_XXXXXXXX/`, last K kept, `latest` pointer.

A checkpoint is written under `step_XXXXXXXX.partial/` by every rank (DeepSpeed's model, optimizer
and ZeRO shards), plus, once, by rank 0: the EMA as whole float32 tensors (`ema.safetensors`) and
`meta.json` (step, samples consumed, world size, ZeRO stage, config, dataset metadata). Rank 0 then
fsyncs every file, writes `COMPLETE`, renames the folder to its final name, fsyncs the parent and
rewrites `latest` atomically. `latest` is the source of truth for `--resume auto`: a crash at any
moment leaves the previous `latest` checkpoint whole, and a `.partial` folder that is ignored and
removed by the next save. Pruning renames a folder to `.deleting` before removing it, so a crash
mid-delete never leaves a half-deleted folder with a valid name.

Nothing here unpickles: meta.json is JSON and the EMA is safetensors. DeepSpeed's own
`load_checkpoint` does unpickle its files (torch.load with weights_only=False): resume only from
run folders you trust.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from safetensors.torch import save_file

from dfm_video.checkpoints import COMPLETE, EMA_FILE, META, complete_tags, step_of, tag_for


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under path (on a shared file system this flushes rank 0's view;
    each writer's close() already pushed its own data)."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def remove_dir(path: Path) -> None:
    """Delete a folder so that no crash leaves it half-deleted under a valid name."""
    if not path.exists():
        return
    doomed = path.with_name(path.name + ".deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    _fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


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


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine: Any, root: Path, step: int, meta: dict, ema: Any, keep_last: int, rank: int) -> Path:
    """Write a complete checkpoint for `step` (collective: call on every rank). `meta` must be JSON-able."""
    tag = tag_for(step)
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
        hook = os.environ.get(
            "DFM_TEST_SAVE_PAUSE", ""
        )  # test hook "STEP:SECONDS": a window to SIGKILL a save in flight
        if hook and int(hook.split(":")[0]) == step:
            time.sleep(float(hook.split(":")[1]))
        _fsync_tree(partial)
        with open(partial / COMPLETE, "w") as f:
            f.write(f"{step}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(partial)
        if (root / tag).exists():  # an earlier timeline's checkpoint of the same step (after a rollback)
            remove_dir(root / tag)
        os.replace(partial, root / tag)
        _fsync_path(root)
        _atomic_write(root / "latest", tag + "\n")
        prune(root, keep_last, tag)
    _barrier()
    return root / tag


def load_engine_state(engine: Any, load_dir: Path, tag: str) -> None:
    """DeepSpeed's load (it unpickles: trusted folders only); ValueError instead of a None path."""
    load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {Path(load_dir) / tag}")
