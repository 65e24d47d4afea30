"""Triton availability, the `kernels: auto|triton|torch` switch, and launch heuristics.

Importing this module never imports triton: triton is an optional GPU extra, and on CPU the
interpreter mode (`TRITON_INTERPRET=1`) is read when a kernel is *decorated*, so the Triton
kernel modules (`kernels/_*_triton.py`) are imported lazily, only once a call resolved to Triton.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import Literal

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
Resolved = Literal["triton", "torch"]


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    # find_spec looks the package up without importing it (importing would freeze the
    # interpreter setting before a test had the chance to set TRITON_INTERPRET).
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. a broken install, or sys.modules["triton"] = None
        return False


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device | str) -> str | None:
    """Why Triton kernels cannot run on `device`, or None when they can.

    They can on a CUDA device with triton importable, or on CPU tensors when triton is
    importable and `TRITON_INTERPRET=1` (the slow interpreter used by the CPU tests).
    """
    device = torch.device(device)
    if not _triton_importable():
        return "the 'triton' package is not importable (install the 'gpu' extra: pip install triton)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available to this torch build"
        return None
    if device.type == "cpu":
        if interpret_mode():
            return None
        return (
            "the tensors are on the CPU: Triton kernels need a CUDA device "
            "(or TRITON_INTERPRET=1, the CPU interpreter used by tests)"
        )
    return f"Triton kernels do not support device type {device.type!r}"


@functools.lru_cache(maxsize=None)
def _warn_fallback_once(device_type: str, reason: str) -> None:
    # One warning per (device, reason): the fallback changes only speed, never results.
    log.warning(
        "kernels='auto' on %s falls back to the torch reference (slower, same results): %s", device_type, reason
    )


def resolve_backend(name: str, device: torch.device | str) -> Resolved:
    """Map the `kernels` switch to the implementation used for tensors on `device`.

    - `torch`: the pure-torch reference, always.
    - `triton`: the Triton kernels; raises `RuntimeError` naming the missing package or device.
    - `auto`: Triton on CUDA when importable, the torch reference otherwise (CPU included, even
      with `TRITON_INTERPRET=1`: the interpreter is for tests, not for speed).
    """
    if name not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {'|'.join(BACKENDS)}, got {name!r}")
    if name == "torch":
        return "torch"
    device = torch.device(device)
    reason = triton_unavailable_reason(device)
    if name == "triton":
        if reason is not None:
            raise RuntimeError(f"kernels='triton' was requested but {reason}")
        return "triton"
    if device.type == "cuda":
        if reason is None:
            return "triton"
        _warn_fallback_once(device.type, reason)
    return "torch"


@functools.lru_cache(maxsize=None)
def _num_sms(device_type: str, index: int | None) -> int:
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index or 0).multi_processor_count
    # The interpreter runs programs one by one: fewer, larger programs are faster there,
    # while 2 still exercises the multi-program reduction paths.
    return 2


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (2 for the CPU interpreter)."""
    return _num_sms(device.type, device.index)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def num_warps_for(tile_elems: int) -> int:
    """Warps for a tile of `tile_elems` elements (Liger-Kernel's rule of thumb)."""
    if tile_elems >= 32768:
        return 32
    if tile_elems >= 8192:
        return 16
    if tile_elems >= 2048:
        return 8
    return 4


def row_split(n_rows: int, block_rows: int, batch: int, device: torch.device) -> tuple[int, int]:
    """Split each sample's `n_rows` into chunks for a reduction over tokens.

    Returns (rows_per_program, n_split): rows_per_program is a multiple of `block_rows`, and
    batch * n_split programs fill the GPU about 4 times over, so the per-sample parameter
    gradients (shift, scale, gate) need only a tiny (B, n_split, D) partial-sum buffer.
    """
    target = max(1, (4 * num_sms(device)) // max(1, batch))
    n_blocks = -(-n_rows // block_rows)
    n_split = max(1, min(target, n_blocks))
    rows_per = -(-n_blocks // n_split) * block_rows
    return rows_per, -(-n_rows // rows_per)


@functools.lru_cache(maxsize=None)
def kernel_module(name: str) -> ModuleType:
    """The Triton kernel module `kernels.<name>`, imported on first use: importing it imports triton
    and decorates its kernels, which freezes the interpreter setting, so it waits until a call has
    resolved to Triton (see the module docstring). It imports nothing back from `kernels`."""
    return importlib.import_module(f"kernels.{name}")
