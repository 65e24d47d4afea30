"""Full (non-causal) attention behind one dispatch function, with pluggable backends.

    attention(q, k, v, backend) -> out        q, k, v, out: (B, Hd, N, Dh)

Backends (softmax scale 1/sqrt(Dh) everywhere):
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`, always available. On CUDA no SDPA
  kernel is disabled, so PyTorch runs its cuDNN / flash / memory-efficient kernels.
- `flash`: flash-attn-4 (`flash_attn.cute.flash_attn_func`, Hopper/Blackwell, sm >= 90) or
  flash-attn 2 (`flash_attn.flash_attn_func`, sm >= 80); CUDA only, fp16/bf16 only.
- `xformers`: `xformers.ops.memory_efficient_attention`; CUDA only. Its compiled part often fails
  to load against a newer torch: an import error or a failing probe both mean "unavailable".

`auto` resolves to `flash` when available on the device, else `sdpa` (on Hopper SDPA's cuDNN
kernel is competitive and usually beats xformers, so `auto` never picks xformers).
Availability is probed once per device with a tiny forward + backward, outside any compiled
region; the dispatch itself is a dict lookup so `torch.compile` can trace through it.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "flash", "xformers")
_PACKAGES = {
    "flash": "flash-attn-4 (`from flash_attn.cute import flash_attn_func`, sm >= 90) or "
    "flash-attn 2 (`from flash_attn import flash_attn_func`, sm >= 80)",
    "xformers": "xformers (`xformers.ops.memory_efficient_attention` with its compiled kernels)",
}

# Kernel per (backend, device) once probed: a callable on (B, N, Hd, Dh) tensors, or the reason
# it is unavailable (a str).
_PROBED: dict[tuple[str, str], Callable[..., Tensor] | str] = {}
# The callable `attention` uses for each non-sdpa backend (the last device resolved).
_IMPL: dict[str, Callable[..., Tensor]] = {}
_warned_fallback: set[str] = set()


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _probe(fn: Callable[..., Tensor], device: torch.device) -> None:
    """Tiny bf16 forward + backward: catches kernels that import but cannot run here."""
    q, k, v = (torch.randn(1, 128, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = fn(q, k, v)
    out.float().sum().backward()
    torch.cuda.synchronize(device)


def _flash_candidate(device: torch.device) -> Callable[..., Tensor] | str:
    major, _ = torch.cuda.get_device_capability(device)
    errors = []
    if major >= 9:
        try:
            from flash_attn.cute import flash_attn_func as fa4  # type: ignore[import-not-found]

            def run_fa4(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                out = fa4(q, k, v, causal=False)
                return out[0] if isinstance(out, tuple) else out  # FA4 returns (out, lse)

            _probe(run_fa4, device)
            return run_fa4
        except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
            errors.append(f"flash-attn-4: {type(e).__name__}: {e}")
    if major >= 8:
        try:
            from flash_attn import flash_attn_func as fa2  # type: ignore[import-not-found]

            def run_fa2(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
                out = fa2(q, k, v, causal=False)
                return out[0] if isinstance(out, tuple) else out

            _probe(run_fa2, device)
            return run_fa2
        except Exception as e:  # noqa: BLE001
            errors.append(f"flash-attn 2: {type(e).__name__}: {e}")
    else:
        errors.append(f"compute capability {major}.x is below sm80")
    return "; ".join(errors)


def _xformers_candidate(device: torch.device) -> Callable[..., Tensor] | str:
    try:
        import xformers.ops as xops  # type: ignore[import-not-found]

        def run_xformers(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return xops.memory_efficient_attention(q, k, v)

        _probe(run_xformers, device)
        return run_xformers
    except Exception as e:  # noqa: BLE001 - import error or a compiled part that does not load
        return f"{type(e).__name__}: {e}"


def _probe_backend(name: str, device: torch.device) -> Callable[..., Tensor] | str:
    key = (name, str(device))
    if key not in _PROBED:
        if device.type != "cuda":
            _PROBED[key] = f"needs a CUDA device, got {device}"
        elif name == "flash":
            _PROBED[key] = _flash_candidate(device)
        else:
            _PROBED[key] = _xformers_candidate(device)
    return _PROBED[key]


def available_attention_backends(device: torch.device | str) -> list[str]:
    """Backends that run on `device`, in the order `auto` prefers them (sdpa always included)."""
    device = _device_key(device)
    names = [n for n in ("flash", "xformers") if callable(_probe_backend(n, device))]
    return (["flash"] if "flash" in names else []) + ["sdpa"] + (["xformers"] if "xformers" in names else [])


def resolve_attention_backend(name: str, device: torch.device | str) -> str:
    """`auto` -> the fastest available backend; an explicit name is checked to run on `device`.

    Raises ValueError for an unknown name and RuntimeError (naming the missing package and why)
    for a backend that is unavailable on the device.
    """
    device = _device_key(device)
    if name == "auto":
        name = available_attention_backends(device)[0]
    if name not in BACKENDS:
        raise ValueError(f"model.attention: unknown backend {name!r}, expected one of {('auto',) + BACKENDS}")
    if name == "sdpa":
        return name
    impl = _probe_backend(name, device)
    if not callable(impl):
        raise RuntimeError(
            f"attention backend {name!r} is unavailable on {device}: it needs {_PACKAGES[name]}; reason: {impl}"
        )
    _IMPL[name] = impl
    return name


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Non-causal softmax attention. q, k, v: (B, Hd, N, Dh) -> (B, Hd, N, Dh), q's dtype.

    `backend` must come from `resolve_attention_backend` (which loads the kernel). flash and
    xformers need fp16/bf16 inputs; with float32 inputs they fall back to sdpa with one warning
    (same math, only speed changes).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend not in _IMPL:
        resolve_attention_backend(backend, q.device)
    if q.dtype not in (torch.float16, torch.bfloat16):
        if backend not in _warned_fallback:
            _warned_fallback.add(backend)
            logger.warning("attention backend %r needs fp16/bf16, got %s: using sdpa", backend, q.dtype)
        return F.scaled_dot_product_attention(q, k, v)
    # flash-attn and xformers take (B, N, Hd, Dh); transposes are views (last dim stays contiguous)
    out = _IMPL[backend](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
