"""Full (non-causal) attention behind one dispatch function, with pluggable backends.

    attention(q, k, v, backend) -> out        q, k, v, out: (B, Hd, N, Dh)

Backends (`model.attention`; softmax scale 1/sqrt(Dh) everywhere):
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention` with PyTorch's own pick of kernel
  (on sm90 with torch >= 2.9 usually cuDNN, else flash / memory-efficient; on CPU its flash or math
  kernel). Always available.
- `sdpa_cudnn`, `sdpa_flash`, `sdpa_efficient`, `sdpa_math`: the same call restricted to one SDPA
  kernel (`torch.nn.attention.sdpa_kernel`). On CPU `sdpa_flash` and `sdpa_math` run.
- `flash2`: flash-attn 2 (`flash_attn.flash_attn_func`, sm >= 80).
- `flash4`: FlashAttention-4 (`flash-attn-4`, `flash_attn.cute.flash_attn_func`, sm >= 90). It runs
  head dim 72 as 80; if it refuses a head dim, the inputs are zero-padded to the next multiple of 16
  (zero q/k columns leave q.k unchanged, zero v columns give zero output columns, cut off again).
- `flash`: `flash4` where it runs, else `flash2`.
- `xformers`: `xformers.ops.memory_efficient_attention`. Its compiled part often fails to load
  against a newer torch: an import error or a failing probe both mean "unavailable".
- `auto`: the fastest backend measured on this GPU at this head dim (`attention_table`, filled by
  `benchmarks/bench_attention.py --write-table`) among those that run here. Without a measurement
  for the device and head dim it is `sdpa`, PyTorch's own pick, i.e. the default kernel: never a
  guessed backend that might be slower. The choice is logged once per (device, head dim).

An explicit backend that cannot run raises ValueError naming the package or kernel and why.
Availability is probed once per (backend, device, head dim) with a tiny forward + backward, outside
any compiled region; the dispatch itself is a dict lookup so `torch.compile` traces through it.
Backends that need fp16/bf16 inputs (every CUDA-only one) run float32 inputs through `sdpa` with one
warning (same math, only speed changes).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from dfm_video.models.attention_table import TABLE_PATH, pick_measured

logger = logging.getLogger(__name__)

SDPA_KERNELS = {
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
PACKAGE_BACKENDS = ("flash4", "flash2", "flash", "xformers")
BACKENDS = ("sdpa", *SDPA_KERNELS, *PACKAGE_BACKENDS)
# Order of the candidates a measured table is matched against (explicit kernels, not aliases).
MEASURABLE = ("sdpa", *SDPA_KERNELS, "flash4", "flash2", "xformers")
_NEEDS = {
    "flash4": "flash-attn-4 (`from flash_attn.cute import flash_attn_func`, CUDA sm >= 90, fp16/bf16)",
    "flash2": "flash-attn 2 (`from flash_attn import flash_attn_func`, CUDA sm >= 80, fp16/bf16)",
    "flash": "flash-attn-4 (sm >= 90) or flash-attn 2 (sm >= 80), CUDA, fp16/bf16",
    "xformers": "xformers (`xformers.ops.memory_efficient_attention` with its compiled kernels), CUDA",
    "sdpa_cudnn": "SDPA's cuDNN kernel (SDPBackend.CUDNN_ATTENTION: CUDA, cuDNN >= 9, fp16/bf16)",
    "sdpa_flash": "SDPA's flash kernel (SDPBackend.FLASH_ATTENTION: CUDA sm >= 80 fp16/bf16, or CPU)",
    "sdpa_efficient": "SDPA's memory-efficient kernel (SDPBackend.EFFICIENT_ATTENTION: CUDA)",
    "sdpa_math": "SDPA's math kernel (SDPBackend.MATH)",
}

# Kernel per (backend, device, head dim) once probed: a callable on (B, Hd, N, Dh) tensors, or the
# reason it is unavailable (a str).
_PROBED: dict[tuple[str, str, int], Callable[..., Tensor] | str] = {}
# The callable `attention` uses for each backend other than `sdpa` (the last device resolved).
_IMPL: dict[str, Callable[..., Tensor]] = {}
_HALF_ONLY_ON_CUDA = {"sdpa_cudnn", "sdpa_flash", "flash4", "flash2", "flash", "xformers"}
_warned_fallback: set[str] = set()
_logged_auto: set[tuple[str, int]] = set()


def _device_key(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device | str) -> str:
    """The name the measured table is keyed by: the GPU's name, or "cpu"."""
    device = _device_key(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _probe(fn: Callable[..., Tensor], device: torch.device, head_dim: int) -> None:
    """Tiny forward + backward: catches kernels that import but cannot run here."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 2, 128, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    fn(q, k, v).float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bnhd(kernel: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Adapt a (B, N, Hd, Dh) kernel (flash-attn, xformers) to (B, Hd, N, Dh); transposes are views."""

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out[0] if isinstance(out, tuple) else out  # flash-attn may return (out, lse)
        return out.transpose(1, 2)

    return run


def padded_head_dim(kernel: Callable[..., Tensor], multiple: int) -> Callable[..., Tensor]:
    """Run `kernel(q, k, v, softmax_scale=...)` with Dh zero-padded up to a multiple of `multiple`.

    Zero q/k columns leave every q.k unchanged, zero v columns give zero output columns (cut off
    again); the softmax scale stays 1/sqrt(original Dh)."""

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dh = q.shape[-1]
        pad = -dh % multiple
        if pad == 0:
            return kernel(q, k, v, softmax_scale=1.0 / math.sqrt(dh))
        q, k, v = (F.pad(x, (0, pad)) for x in (q, k, v))
        return kernel(q, k, v, softmax_scale=1.0 / math.sqrt(dh))[..., :dh]

    return run


def _sdpa_with(kernel: SDPBackend) -> Callable[..., Tensor]:
    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _try(candidates: list[tuple[str, Callable[[], Callable[..., Tensor]]]], device, head_dim):
    """The first candidate whose import and probe succeed, else all the reasons joined."""
    errors = []
    for label, make in candidates:
        try:
            fn = make()
            _probe(fn, device, head_dim)
            return fn
        except Exception as e:  # noqa: BLE001 - any failure means "not usable here", reported verbatim
            errors.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return "; ".join(errors)


def _fa4() -> Callable[..., Tensor]:
    from flash_attn.cute import flash_attn_func  # type: ignore[import-not-found]

    return flash_attn_func


def _fa2() -> Callable[..., Tensor]:
    from flash_attn import flash_attn_func  # type: ignore[import-not-found]

    return flash_attn_func


def _xformers() -> Callable[..., Tensor]:
    import xformers.ops as xops  # type: ignore[import-not-found]

    return xops.memory_efficient_attention


def _candidate(name: str, device: torch.device, head_dim: int) -> Callable[..., Tensor] | str:
    if name in SDPA_KERNELS:
        return _try([(name, lambda: _sdpa_with(SDPA_KERNELS[name]))], device, head_dim)
    if device.type != "cuda":
        return f"needs a CUDA device, got {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if name == "flash":
        fn = _probe_backend("flash4", device, head_dim)
        return fn if callable(fn) else _probe_backend("flash2", device, head_dim)
    if name == "flash4":
        if major < 9:
            return f"compute capability {major}.{minor} is below sm90"
        native = ("flash-attn-4", lambda: _bnhd(lambda q, k, v: _fa4()(q, k, v, causal=False)))
        padded = ("flash-attn-4 with Dh padded to a multiple of 16", lambda: _bnhd(padded_head_dim(_fa4(), 16)))
        return _try([native, padded], device, head_dim)
    if name == "flash2":
        if major < 8:
            return f"compute capability {major}.{minor} is below sm80"
        return _try([("flash-attn 2", lambda: _bnhd(lambda q, k, v: _fa2()(q, k, v, causal=False)))], device, head_dim)
    return _try([("xformers", lambda: _bnhd(_xformers()))], device, head_dim)


def _probe_backend(name: str, device: torch.device, head_dim: int) -> Callable[..., Tensor] | str:
    key = (name, str(device), head_dim)
    if key not in _PROBED:
        _PROBED[key] = _candidate(name, device, head_dim)
    return _PROBED[key]


def available_attention_backends(device: torch.device | str, head_dim: int = 64) -> list[str]:
    """Explicit backends (no aliases) that run on `device` at `head_dim`; `sdpa` always first."""
    device = _device_key(device)
    return ["sdpa"] + [n for n in MEASURABLE[1:] if callable(_probe_backend(n, device, head_dim))]


def pick_auto(device: torch.device | str, head_dim: int, table: Path = TABLE_PATH) -> tuple[str, str]:
    """(backend `auto` means on `device` at `head_dim`, why), by the rule in the module docstring."""
    device = _device_key(device)
    name = device_name(device)
    available = available_attention_backends(device, head_dim)
    picked = pick_measured(name, head_dim, available, table)
    if picked is None:
        return "sdpa", f"no measurement for {name!r} at head dim {head_dim}: PyTorch's own SDPA pick"
    best, row = picked
    missing = {k: v for k, v in row.items() if k not in available and v > row[best]}
    why = f"fastest measured on {name!r} at head dim {head_dim}: {row[best]:.0f} TFLOP/s fwd+bwd"
    if missing:
        why += "; faster but not runnable here: " + ", ".join(f"{k} ({v:.0f})" for k, v in missing.items())
    return best, why


def resolve_attention_backend(name: str, device: torch.device | str, head_dim: int = 64) -> str:
    """`auto` -> the fastest measured backend (see module docstring); an explicit one is checked to run.

    Raises ValueError for an unknown name or for a backend that cannot run on `device` at
    `head_dim` (naming the package or kernel it needs and why it failed).
    """
    device = _device_key(device)
    if name == "auto":
        name, why = pick_auto(device, head_dim)
        if (str(device), head_dim) not in _logged_auto:
            _logged_auto.add((str(device), head_dim))
            logger.info("model.attention=auto on %s (head dim %d): %s (%s)", device, head_dim, name, why)
    if name not in BACKENDS:
        raise ValueError(f"model.attention: unknown backend {name!r}, expected one of {('auto',) + BACKENDS}")
    if name == "sdpa":
        return name
    impl = _probe_backend(name, device, head_dim)
    if not callable(impl):
        raise ValueError(
            f"model.attention={name!r} cannot run on {device} at head dim {head_dim}: it needs {_NEEDS[name]}; "
            f"reason: {impl}"
        )
    _IMPL[name] = impl
    return name


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "sdpa") -> Tensor:
    """Non-causal softmax attention. q, k, v: (B, Hd, N, Dh) -> (B, Hd, N, Dh), q's dtype.

    `backend` must come from `resolve_attention_backend` (which probes and loads the kernel).
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend not in _IMPL:
        resolve_attention_backend(backend, q.device, q.shape[-1])
    if q.is_cuda and q.dtype not in (torch.float16, torch.bfloat16) and backend in _HALF_ONLY_ON_CUDA:
        if backend not in _warned_fallback:
            _warned_fallback.add(backend)
            logger.warning("attention backend %r needs fp16/bf16, got %s: using sdpa", backend, q.dtype)
        return F.scaled_dot_product_attention(q, k, v)
    return _IMPL[backend](q, k, v)
