"""An exclusive lock on a folder for one process at a time (a preprocessing output, a training run).

The lock is `flock` on a file inside the folder, so the kernel drops it when its holder dies, however
it dies (SIGKILL, OOM, a lost node's processes): a stale lock never blocks a rerun. The file names the
holder (host, pid, start time) for the message a second process gets, and for the note a process
that takes over a dead holder's lock logs.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional


class LockHeld(RuntimeError):
    """The lock is held by a live process; `holder` names it (host, pid, started) as far as known."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "an unknown process (the lock file names no holder)"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _read_holder(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096).decode(errors="replace").strip()
    try:
        holder = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        holder = {"raw": raw}
    return holder if isinstance(holder, dict) else {"raw": raw}


class DirLock:
    """`acquire()` takes the lock or raises LockHeld; it returns the dead holder it replaced, if any.
    The lock lasts until `release()` or the end of the process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> Optional[dict[str, Any]]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(self.path, holder) from None
        stale = _read_holder(fd) or None  # a holder named but not holding: it died without releasing
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report as stale
            os.close(self._fd)
            self._fd = None
