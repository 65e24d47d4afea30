"""Crash-safe checkpoints: `<run>/checkpoints/step_XXXXXXXX/`, last K kept, `latest` pointer.

A checkpoint is written under `step_XXXXXXXX.partial/` by every rank (DeepSpeed's model, optimizer
and ZeRO shards, plus one EMA file per rank), then rank 0 renames the folder to its final name and
rewrites `latest` atomically. A crash at any moment leaves the previous complete checkpoint and at
worst a `.partial` folder that is ignored and removed by the next save.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

_TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(root: Path) -> list[str]:
    """Complete checkpoint tags under root, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _TAG_RE.match(p.name) and (p / "COMPLETE").is_file())


def latest_tag(root: Path) -> Optional[str]:
    tags = complete_tags(root)
    return tags[-1] if tags else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    engine: Any, root: Path, step: int, client_state: dict, ema_state: dict, keep_last: int, rank: int
) -> Path:
    """Write a complete checkpoint for `step` (collective: call on every rank)."""
    tag = tag_for(step)
    partial = tag + ".partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(root / partial, ignore_errors=True)
    _barrier()
    engine.save_checkpoint(str(root), tag=partial, client_state=client_state, save_latest=False)
    ema_path = root / partial / f"ema_rank{rank:05d}.pt"
    torch.save(ema_state, ema_path.with_suffix(".tmp"))
    os.replace(ema_path.with_suffix(".tmp"), ema_path)
    _barrier()
    if rank == 0:
        (root / partial / "COMPLETE").write_text(f"{step}\n")
        if (root / tag).exists():  # a previous run of the same step (e.g. resumed twice): replace it
            shutil.rmtree(root / tag)
        os.replace(root / partial, root / tag)
        _atomic_write(root / "latest", tag + "\n")
        for old in complete_tags(root)[:-keep_last]:
            shutil.rmtree(root / old, ignore_errors=True)
        for stale in root.glob("*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return root / tag


def load_checkpoint(engine: Any, root: Path, tag: str, rank: int) -> tuple[dict, dict]:
    """Restore engine state; returns (client_state, this rank's EMA state)."""
    path = root / tag
    if not (path / "COMPLETE").is_file():
        raise ValueError(f"checkpoint {path} is incomplete or missing (no COMPLETE marker)")
    ema_path = path / f"ema_rank{rank:05d}.pt"
    if not ema_path.is_file():
        raise ValueError(f"checkpoint {path} has no EMA shard for rank {rank}: was it written with another world size?")
    load_path, client_state = engine.load_checkpoint(str(root), tag=tag)
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load checkpoint {path}")
    return client_state or {}, torch.load(ema_path, map_location="cpu", weights_only=False)


def read_checkpoint_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict, bool]:
    """EMA weights of a DeepSpeed checkpoint folder, without DeepSpeed or a process group.

    Returns (weights by name, config dict, dataset meta, partitioned). Whole-tensor EMAs (ZeRO 0-2) come as they are; under
    ZeRO-3 the per-rank flat partitions are concatenated in rank order and returned flat, and the
    caller cuts them to each parameter's numel and shape (it knows them from the model).
    """
    path = Path(path)
    if not (path / "COMPLETE").is_file():
        raise ValueError(f"{path} is not a complete dfm-video checkpoint (no COMPLETE marker)")
    states = sorted(path.glob("*mp_rank_00_model_states.pt"))
    emas = sorted(path.glob("ema_rank*.pt"))
    if not states or not emas:
        raise ValueError(f"{path}: missing {'model states' if not states else 'EMA shards'}; is this a dfm-video checkpoint?")
    try:
        client = torch.load(states[0], map_location="cpu", weights_only=False)
        shards = [torch.load(p, map_location="cpu", weights_only=False) for p in emas]
    except Exception as exc:  # truncated or corrupt pickle / zip
        raise ValueError(f"{path}: cannot read checkpoint files ({exc})") from exc
    if "config" not in client or "dataset_meta" not in client:
        raise ValueError(f"{path}: checkpoint lacks the resolved config or dataset metadata")
    names = shards[0]["names"]
    if shards[0]["partitioned"]:
        weights = {n: torch.cat([s["shadow"][i].flatten() for s in shards]) for i, n in enumerate(names)}
    else:
        weights = dict(zip(names, shards[0]["shadow"]))
    return weights, client["config"], client["dataset_meta"], bool(shards[0]["partitioned"])
