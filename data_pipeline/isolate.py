"""Per-clip fault isolation: every clip is decoded in a child process the caller can kill.

Native decoders can hang (decord spins on some files whose header over-reports the frame count)
or crash the process (a segfault in FFmpeg). Inside a Ray task either would hang the job or fail
it after Ray's retries, and the same clip would fail again on every resume. Here each decode runs
in a long-lived child process (one per slot, recycled after `recycle_after` clips to bound native
memory growth) and the parent waits at most `timeout_s`:
- no answer in time            -> the child is killed: reject "decode timeout after N s";
- the child died of a signal    -> reject "decoder crashed: SIGSEGV" (the signal's name);
- MemoryError under the cap     -> reject "decoder out of memory" (cap: RLIMIT_AS of the child);
- a transient I/O error         -> retried `io_retries` times (backoff), then reject "I/O error".
The job always goes on. Children come from a `forkserver` (a clean process with the decoders
imported once), never from a fork of the multi-threaded Ray worker.

Every exception a decode raises is turned into the clip's fate in one place, `outcome`.

Fault injection (tests only): fault `decode.fault` of `dfm_video.faults` =
{file base name: "hang" | "segv" | "oom" | "eio" | {"eio_first": k, "count_file": path}}. The last
fails the first k decode attempts of that clip with EIO and appends one line per attempt to
`count_file`, so a test counts the retries outside the decoder processes. The driver reads the fault
(`decode_faults`) into the settings, because Ray workers and the forkserver may have started before
the variable was set; it acts inside the child, so the real isolation machinery handles the real failure.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from data_pipeline.decode import ClipRejected, Decoded, DecodeParams, TransientIOError, decode_clip
from dfm_video import faults
from dfm_video.config.schema import PreprocessConfig

TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.EINTR,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}


FAULT_ACTIONS = ("hang", "segv", "oom", "eio")


def _fault_action(action: Any) -> Any:
    """A fault action as a hashable value: the name, or ("eio_first", k, count_file)."""
    if isinstance(action, str) and action in FAULT_ACTIONS:
        return action
    if isinstance(action, dict) and set(action) == {"eio_first", "count_file"} and isinstance(action["eio_first"], int):
        return ("eio_first", action["eio_first"], str(action["count_file"]))
    raise ValueError(
        f"{faults.ENV} decode.fault must map file base names to one of {list(FAULT_ACTIONS)} or "
        f'{{"eio_first": k, "count_file": path}}, got {action!r}'
    )


def decode_faults() -> tuple[tuple[str, Any], ...]:
    """Fault `decode.fault` as sorted (file base name, action) pairs; () when it is not switched on."""
    table = faults.get("decode.fault", {})
    if not isinstance(table, dict):
        raise ValueError(f"{faults.ENV} decode.fault must map file base names to actions, got {table!r}")
    return tuple(sorted((name, _fault_action(a)) for name, a in table.items()))


@dataclass(frozen=True)
class IsolationSettings:
    timeout_s: float = 120.0
    memory_mb: Optional[int] = None
    io_retries: int = 2
    recycle_after: int = 200  # clips per child before a fresh one (native leaks stay bounded)
    retry_backoff_s: float = 0.2
    faults: tuple[tuple[str, Any], ...] = ()  # tests only: (file base name, action), see decode_faults

    @classmethod
    def from_config(cls, p: PreprocessConfig) -> IsolationSettings:
        return cls(p.decode_timeout_s, p.decode_memory_mb, p.io_retries, faults=decode_faults())


def outcome(path: str, exc: BaseException, memory_mb: Optional[int]) -> tuple:
    """The one mapping from an exception raised while decoding `path` to the clip's fate:
    ("reject", reason, detail) or ("transient", detail) (retried, then an "I/O error" reject)."""
    if isinstance(exc, ClipRejected):
        return ("reject", exc.reason, exc.detail)
    if isinstance(exc, TransientIOError):
        return ("transient", str(exc))
    if isinstance(exc, MemoryError):
        return ("reject", "decoder out of memory", f"{path}: decoder exceeded decode_memory_mb={memory_mb}: {exc!r}")
    if isinstance(exc, OSError):
        if exc.errno in TRANSIENT_ERRNOS:
            return ("transient", f"{path}: {exc}")
        return ("reject", "I/O error", f"{path}: {exc}")
    # an unforeseen decoder error is still a bad clip, not a dead job
    return ("reject", "decode error", f"{path}: {type(exc).__name__}: {exc}")


def _inject_fault(path: str, injected: tuple[tuple[str, Any], ...], memory_mb: Optional[int]) -> None:
    action = dict(injected).get(os.path.basename(path))
    if action == "hang":
        time.sleep(10**6)
    elif action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "oom":
        # Just above the cap (the child already holds more than nothing), so this fails only
        # because the cap is applied; without a cap the pages are never touched (np.empty).
        np.empty(((memory_mb or 1024) + 64) << 20, dtype=np.uint8)
    elif action == "eio":
        raise OSError(errno.EIO, "Input/output error (injected fault)", path)
    elif isinstance(action, tuple) and action[0] == "eio_first":
        _, k, count_file = action
        with open(count_file, "a+") as f:  # one line per attempt, across decoder processes
            f.write("attempt\n")
            f.flush()
            f.seek(0)
            attempts = len(f.readlines())
        if attempts <= k:
            raise OSError(errno.EIO, f"Input/output error (injected fault, attempt {attempts} of {k} failing)", path)


def _child_main(conn: Any, settings: IsolationSettings, threads: int) -> None:
    """Child loop: (path, is_image, params) -> ("ok", Decoded) | ("reject", reason, detail) | ("transient", detail)."""
    import resource

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a child ends
    # A crash must end the child at once, with its signal as the exit status: no inherited
    # fault handler (faulthandler, a library's backtrace printer) may catch it and linger.
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        import faulthandler

        faulthandler.disable()
    except Exception:
        pass
    torch.set_num_threads(max(1, threads))
    if settings.memory_mb:
        cap = int(settings.memory_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if req is None:
            return
        path, is_image, params = req
        try:
            _inject_fault(path, settings.faults, settings.memory_mb)
            msg: tuple = ("ok", decode_clip(path, is_image, params))
        except Exception as exc:
            msg = outcome(path, exc, settings.memory_mb)
        try:
            conn.send(msg)
        except MemoryError:
            conn.send(
                (
                    "reject",
                    "decoder out of memory",
                    f"{path}: result too large for decode_memory_mb={settings.memory_mb}",
                )
            )


_CTX_LOCK = threading.Lock()
_CTX: Any = None


def _context() -> Any:
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(
                ["data_pipeline.isolate", "data_pipeline.decode", "numpy", "torch", "av", "decord"]
            )
            _CTX = ctx
        return _CTX


class DecoderProcess:
    """One child process decoding one clip at a time; replaced after a crash, a timeout or `recycle_after` clips."""

    def __init__(self, settings: IsolationSettings, threads: int) -> None:
        self.settings, self.threads = settings, threads
        self.proc: Any = None
        self.conn: Any = None
        self.used = 0

    def _start(self) -> None:
        ctx = _context()
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(child, self.settings, self.threads), daemon=True)
        self.proc.start()
        child.close()
        self.conn, self.used = parent, 0

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(timeout=5)
            self.conn.close()
        self.proc = self.conn = None

    def decode_once(self, path: str, is_image: bool, params: DecodeParams) -> tuple:
        if self.proc is None or not self.proc.is_alive() or self.used >= self.settings.recycle_after:
            self.stop()
            self._start()
        self.used += 1
        timeout = self.settings.timeout_s
        hung = False
        try:
            self.conn.send((path, is_image, params))
            if self.conn.poll(timeout):
                return self.conn.recv()
            hung = True
        except (EOFError, OSError, BrokenPipeError):
            pass  # the child died: its exit status says how
        if hung:  # no answer in time
            self.stop()
            return (
                "reject",
                f"decode timeout after {timeout:g} s",
                f"{path}: decoding took longer than "
                f"preprocess.decode_timeout_s={timeout:g} s; the decoder process was killed",
            )
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        self.stop()
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            return (
                "reject",
                f"decoder crashed: {name}",
                f"{path}: the decoder process died of {name} (signal {-code})",
            )
        return ("reject", "decoder crashed", f"{path}: the decoder process exited with status {code}")

    def decode(self, path: str, is_image: bool, params: DecodeParams) -> Decoded | ClipRejected:
        """Decoded frames, or the `ClipRejected` that says why not (never raises for a bad clip)."""
        for attempt in range(self.settings.io_retries + 1):
            msg = self.decode_once(path, is_image, params)
            if msg[0] == "ok":
                return msg[1]
            if msg[0] == "reject":
                return ClipRejected(msg[1], msg[2])
            if attempt < self.settings.io_retries:
                time.sleep(self.settings.retry_backoff_s * 2**attempt)
        return ClipRejected("I/O error", f"{msg[1]} (still failing after {self.settings.io_retries} retries)")


class DecodePool:
    """`workers` decoder processes driven by as many threads (the GIL is released while waiting)."""

    def __init__(self, settings: IsolationSettings, workers: int, threads: int = 1) -> None:
        self.procs = [DecoderProcess(settings, threads) for _ in range(max(1, workers))]
        self.free: list[DecoderProcess] = list(self.procs)
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=len(self.procs), thread_name_prefix="decode")

    def _one(self, path: str, is_image: bool, params: DecodeParams) -> Decoded | ClipRejected:
        with self.lock:
            proc = self.free.pop()
        try:
            return proc.decode(path, is_image, params)
        finally:
            with self.lock:
                self.free.append(proc)

    def decode_many(self, items: Sequence[tuple[str, bool]], params: DecodeParams) -> list[Decoded | ClipRejected]:
        return list(self.executor.map(lambda it: self._one(it[0], it[1], params), items))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for p in self.procs:
            p.stop()


_POOLS: dict[tuple, DecodePool] = {}


def shared_pool(settings: IsolationSettings, workers: int, threads: int) -> DecodePool:
    """One pool per worker process and settings (Ray reuses worker processes across tasks)."""
    key = (settings, workers, threads)
    if key not in _POOLS:
        _POOLS[key] = DecodePool(settings, workers, threads)
    return _POOLS[key]
