"""The folder lock shared by preprocessing and training (dfm_video/dir_lock.py), with real processes:
a live holder is named, a SIGKILLed one never blocks the next run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfm_video.data.store import DatasetStore
from dfm_video.dir_lock import DirLock, LockHeld

ROOT = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time; from dfm_video.dir_lock import DirLock; "
    "DirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
)


def _holder(lock: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_is_recovered(tmp_path):
    lock = tmp_path / ".lock"
    proc = _holder(lock)
    try:
        with pytest.raises(LockHeld) as e:
            DirLock(lock).acquire()
        assert e.value.holder["pid"] == proc.pid and e.value.holder["host"] == socket.gethostname()
        assert "started" in e.value.holder
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    mine = DirLock(lock)
    stale = mine.acquire()  # the dead holder's lock: taken over, and reported
    assert stale and stale["pid"] == proc.pid
    with pytest.raises(LockHeld):
        DirLock(lock).acquire()
    mine.release()
    assert DirLock(lock).acquire() is None  # a clean release leaves no stale holder behind


def test_the_preprocessing_output_lock_names_the_holder(tmp_path):
    proc = _holder(tmp_path / ".lock")
    try:
        time.sleep(0.1)
        with pytest.raises(ValueError, match=rf"in use by another preprocess run: pid {proc.pid} on host"):
            DatasetStore(tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    DatasetStore(tmp_path).close()
