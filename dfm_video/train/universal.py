"""Resume on another world size through DeepSpeed's universal checkpoints (same ZeRO stage: resume.py refuses a change).

A checkpoint stores the world size and ZeRO stage it was written with (meta.json). When the
resuming run differs in either, rank 0 converts the DeepSpeed part with
`python -m deepspeed.checkpoint.ds_to_universal` (in a subprocess: it forks worker pools, which a
process holding a process group should not do) into `<run>/checkpoints/.universal/<tag>/`; every
rank then loads it with `"checkpoint": {"load_universal": true}` and an explicit tag (DeepSpeed
writes no `latest` for it). The folder is removed after a successful load. The EMA needs no
conversion: it is stored as whole tensors (see ema.py). The sample counter is world-size
independent, so the data position carries over.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

UNIVERSAL_DIR = ".universal"


def needs_universal(meta: dict, world_size: int, zero_stage: int) -> bool:
    return int(meta["world_size"]) != world_size or int(meta["zero_stage"]) != zero_stage


def universal_path(ckpt_root: Path, tag: str) -> Path:
    return Path(ckpt_root) / UNIVERSAL_DIR / tag


def convert_to_universal(src: Path, dst: Path, zero_stage: int, timeout_s: float = 6 * 3600) -> None:
    """Rank 0 only. ValueError with the converter's output tail if it fails."""
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
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
    env = dict(os.environ)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if r.returncode != 0:
        tail = (r.stdout[-1500:] + r.stderr[-1500:]).strip()
        raise ValueError(f"converting {src} to a universal checkpoint failed (exit {r.returncode}):\n{tail}")
    os.replace(partial, dst)


def remove_universal(ckpt_root: Path) -> None:
    shutil.rmtree(Path(ckpt_root) / UNIVERSAL_DIR, ignore_errors=True)
