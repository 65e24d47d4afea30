"""The DiT's small ops, dispatched through `kernels` (one implementation and one convention each).

`kernels/` owns the math: every op there has a pure-torch reference (the single source of truth,
compile-friendly) and a Triton version, chosen by the `kernels: auto|triton|torch` switch. This
module only fixes the DiT's choices (LayerNorm without affine weights, eps = 1e-6) and caches the
RoPE tables; the model passes the backend it resolved once per device (`DiT3D.kernels_backend`),
i.e. "triton" or "torch", never "auto". Shape legend: B batch, N tokens, D width, Hd heads,
Dh head dim.

3D RoPE convention: `kernels/rope.py` (rotate-half on split pairs (x[i], x[i + Dh/2]); h and w
get Dh // 6 pairs each, t the rest; tables (N, Dh/2) in float32).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

import kernels

EPS = 1e-6  # DiT's LayerNorm / RMSNorm eps


# -- adaLN: modulated norm and gated residual (kernels) ------------------------------------------


def modulated_norm(x: Tensor, shift: Tensor, scale: Tensor, backend: str = "torch") -> Tensor:
    """adaLN pre-norm: (1 + scale) * LayerNorm(x) + shift. x (B, N, D); shift, scale (B, D)."""
    return kernels.modulated_norm(x, shift, scale, "layer", EPS, backend=backend)


def gated_residual(x: Tensor, gate: Tensor, y: Tensor, backend: str = "torch") -> Tensor:
    """adaLN-zero residual: x (B, N, D) + gate (B, D) * y (B, N, D)."""
    return kernels.gated_residual(x, gate, y, backend=backend)


def gated_residual_modulated_norm(
    x: Tensor, gate: Tensor, y: Tensor, shift: Tensor, scale: Tensor, backend: str = "torch"
) -> tuple[Tensor, Tensor]:
    """h = x + gate * y and the next sub-layer's input (1 + scale) * LayerNorm(h) + shift, fused.

    x, y (B, N, D); gate, shift, scale (B, D) -> (h, out), both (B, N, D) in x.dtype.
    """
    return kernels.gated_residual_modulated_norm(x, gate, y, shift, scale, "layer", EPS, backend=backend)


# -- QK-norm (no kernel: a weighted RMSNorm over the head dim) ------------------------------------


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = EPS) -> Tensor:
    """RMSNorm over the last dim, computed in float32 (at least): x * rsqrt(mean(x^2) + eps) * weight."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.to(xf.dtype)
    return out.to(x.dtype)


# -- 3D RoPE (kernels' convention) -------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _rope_tables_cached(
    grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    # Built outside inference mode and without grad so a table first made while sampling can be
    # reused by a training step (inference tensors cannot be saved for backward).
    with torch.inference_mode(False), torch.no_grad():
        return kernels.build_rope_3d_tables(grid, head_dim, theta, device=device, dtype=dtype)


def rope_tables(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """cos, sin (N, Dh/2) for a token grid (Tg, Hg, Wg), N = Tg * Hg * Wg, t-major; cached.

    Keep them float32 (the default): angles at large positions lose the relative-position
    property in bf16.
    """
    grid = tuple(int(g) for g in grid)
    return _rope_tables_cached(grid, int(head_dim), float(theta), torch.device(device), dtype)


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Rotate q (B, Hd, N, Dh) and k (B, Hk, N, Dh) by the tables (N, Dh/2) in one pass.

    float32 (at least) math, q's/k's dtype out. q and k may be strided views (e.g. of a fused
    qkv projection) as long as the last dim is contiguous.
    """
    return kernels.apply_rope(q, k, cos, sin, backend=backend)
