"""World-size conversion: a ZeRO checkpoint rewritten as a DeepSpeed universal checkpoint, which
any world size can load. Rank 0 converts before any process group (so no collective timeout runs
while it works); the other ranks wait for its `CONVERTED` marker on the shared run folder. A finished
conversion is kept until a load succeeds, so a restart reuses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dfm_video.train.durable import atomic_write, fsync_path, fsync_tree

UNIVERSAL_DIR = ".universal"


def needs_universal(meta: dict, world_size: int, zero_stage: int) -> bool:
    return int(meta["world_size"]) != world_size or int(meta["zero_stage"]) != zero_stage


def universal_path(ckpt_root: Path, tag: str) -> Path:
    return Path(ckpt_root) / UNIVERSAL_DIR / tag


CONVERTED = "CONVERTED"  # in a finished universal folder: a restart reuses it instead of converting again


def convert_to_universal(src: Path, dst: Path, zero_stage: int, timeout_s: float = 6 * 3600) -> bool:
    """Rank 0 only, before any process group. False when `dst` holds a finished conversion of `src`
    (kept across restarts); ValueError with the converter's output tail if it fails."""
    marker = dst / CONVERTED
    if marker.is_file() and marker.read_text().strip() == str(src):
        return False
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # the converter cannot continue a folder it did not finish
    shutil.rmtree(dst, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(src),
        "--output_folder",
        str(partial),
    ]
    if zero_stage <= 2:
        # ZeRO 1-2 checkpoints of a plain module lack the universal_checkpoint_info the converter
        # requires; the converter can add it (measured: weights and moments then load exactly).
        cmd.append("--inject_missing_state")
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=timeout_s)
    if r.returncode != 0:
        tail = (r.stdout[-1500:] + r.stderr[-1500:]).strip()
        raise ValueError(f"converting {src} to a universal checkpoint failed (exit {r.returncode}):\n{tail}")
    fsync_tree(partial)
    atomic_write(partial / CONVERTED, f"{src}\n")
    os.replace(partial, dst)
    fsync_path(dst.parent)
    return True


def wait_for_conversion(src: Path, dst: Path, timeout_s: float = 6 * 3600) -> None:
    """Ranks other than 0, before any process group: wait until rank 0 has converted `src` (polls
    the shared run folder; no collective is open meanwhile, so no collective timeout applies)."""
    deadline = time.monotonic() + timeout_s
    marker = dst / CONVERTED
    while not (marker.is_file() and marker.read_text().strip() == str(src)):
        if time.monotonic() > deadline:
            raise ValueError(f"rank 0 did not convert {src} into {dst} within {timeout_s:.0f} s")
        time.sleep(2.0)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def remove_universal(ckpt_root: Path) -> None:
    shutil.rmtree(Path(ckpt_root) / UNIVERSAL_DIR, ignore_errors=True)
