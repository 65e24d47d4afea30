"""Keep library chatter (Ray's core worker, Ray's and Ray Data's loggers) in a log file, not the console.

Ray writes to the process's stderr from C++ (the core worker's error-level notices, e.g. that an
actor has constructor arguments in the object store) and from Python loggers with their own
handlers (token authentication, "progress bars disabled", "execution finished"). None of that is
for the person who started the job: an "E" line reads as failure. While `library_output_to` is
active, file descriptor 2 (so `sys.stderr`, which Ray's Python handler looks up at each record)
points at a log file, and this program's own output (the root logger's handlers, and the
progress bar, given the yielded stream) goes to a duplicate of the real console.
Ray's worker processes keep their output in Ray's session logs (`log_to_driver=False`).

The constructor-argument notice itself is harmless here: Ray Data puts each actor's constructor
arguments (its map transformer, which holds the stage spec) in the object store and the driver
holds that reference for the whole run, so a restarted actor finds them (tested by killing the
encoder actor mid-run: tests/test_pipeline_retries.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def library_output_to(path: str | Path) -> Iterator[TextIO]:
    """Send whatever is written to fd 2 to `path` (appended) while active; yields the console stream.

    The root logger's stream handlers are moved to the console for the duration and restored
    afterwards (also when the body raises: its traceback is printed after the exit, on the console)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_stderr = sys.stderr
    old_stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ours = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (old_stderr, sys.__stderr__)
    ]
    os.dup2(log_fd, 2)
    os.close(log_fd)
    previous = [h.setStream(console) for h in ours]
    try:
        yield console
    finally:
        for h, stream in zip(ours, previous):
            h.setStream(stream)
        console.flush()
        old_stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.close()
