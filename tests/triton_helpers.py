"""Triton in the tests: on CPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`).

The interpreter must be requested before `triton` is first imported: triton's own standard library
(`tl.sum`, ...) is jitted at import, for GPUs unless TRITON_INTERPRET=1, and a kernel reads the mode
when it is decorated. `torch.utils.flop_counter` imports triton during collection, so conftest.py
imports this module before anything else; the kernel test modules import it too (their skip mark
and device come from here), which also covers a run without the conftest (`--noconftest`).
The interpreter's bf16 arithmetic is wrong: bf16 is left to the `gpu` tests.
"""

from __future__ import annotations

import os

import pytest
import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if DEV == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import _triton  # noqa: E402  (after the setting: reads it)

# Why Triton kernels cannot run on DEV in this process, or None when they can.
TRITON_UNAVAILABLE = _triton.triton_unavailable_reason(DEV)
needs_triton = pytest.mark.skipif(
    TRITON_UNAVAILABLE is not None, reason=f"Triton kernels cannot run: {TRITON_UNAVAILABLE}"
)
