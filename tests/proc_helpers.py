"""Child processes of the tests, each in its own process group (session).

A launcher (deepspeed, torchrun, `ray up`, pdsh) starts grandchildren: killing only the direct
child on a timeout would leave ranks, Ray workers or ssh sessions running after the test. So every
command here starts with `start_new_session=True`, and a timeout (or Ctrl-C) SIGKILLs the whole group.
What leaves the group (an sshd session, a daemonized Ray) is found by a marker in its environment
(`kill_by_environ`, `wait_gone`): the tests give each launch a private HOME or RAY_TMPDIR.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional, Sequence


def start_group(cmd: Sequence[str], **popen_kw: Any) -> subprocess.Popen:
    """`subprocess.Popen(cmd)` as the leader of a new process group (kill it with `kill_group`)."""
    return subprocess.Popen(list(cmd), start_new_session=True, **popen_kw)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every process of the group `proc` leads (the launcher and all it started)."""
    os.killpg(proc.pid, sig)


def _kill_group_if_alive(proc: subprocess.Popen) -> None:
    try:
        kill_group(proc)
    except ProcessLookupError:  # the whole group has exited already
        pass


def run_group(
    cmd: Sequence[str],
    timeout: Optional[float],
    *,
    merge_stderr: bool = False,
    raise_on_timeout: bool = True,
    **popen_kw: Any,
) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group, capturing text output (`merge_stderr`: stderr into stdout).

    After `timeout` seconds the group is SIGKILLed; then `subprocess.TimeoutExpired` is raised (as
    `subprocess.run` does), or with `raise_on_timeout=False` the result comes back with returncode
    -9 and a `[test] TIMEOUT` line at the end of its output (for cleanup commands that must not raise).
    """
    proc = start_group(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        **popen_kw,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group_if_alive(proc)
        out, err = proc.communicate()
        if raise_on_timeout:
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        note = f"\n[test] TIMEOUT after {timeout}s: {' '.join(map(str, proc.args))}\n"
        if merge_stderr:
            out = (out or "") + note
        else:
            err = (err or "") + note
        return subprocess.CompletedProcess(proc.args, -9, out, err)
    except BaseException:  # Ctrl-C: the group is outside the terminal's, so it would not see the SIGINT
        _kill_group_if_alive(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pids_with_environ(marker: str) -> list[tuple[int, str]]:
    """(pid, comm) of every process (but this one) whose environment holds ``marker`` (KEY=VALUE)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            if needle in env.split(b"\0"):
                found.append((int(entry.name), (entry / "comm").read_text().strip()))
        except OSError:
            continue
    return found


def kill_by_environ(marker: str) -> list[str]:
    """SIGKILL every process whose environment holds ``marker``; returns ``pid:comm`` of each."""
    killed = []
    for pid, comm in pids_with_environ(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{pid}:{comm}")
        except OSError:
            pass
    return killed


def wait_gone(marker: str, timeout: float = 10) -> list[tuple[int, str]]:
    """Wait until no process carries ``marker``; returns those still there (zombies excluded)."""
    deadline = time.time() + timeout
    while True:
        left = [(pid, comm) for pid, comm in pids_with_environ(marker) if not _is_zombie(pid)]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
