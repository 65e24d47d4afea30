"""Durable file operations for run folders: fsync'd trees, atomic small files, crash-safe removal.

A crash (SIGKILL, node loss) at any moment must leave either the old or the new state under a valid
name, never a torn one: checkpoints, exports and universal conversions all rely on these."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under path (on a shared file system this flushes rank 0's view;
    each writer's close() already pushed its own data)."""
    for dirpath, _, files in os.walk(path):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def remove_dir(path: Path) -> None:
    """Delete a folder so that no crash leaves it half-deleted under a valid name."""
    if not path.exists():
        return
    doomed = path.with_name(path.name + ".deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
