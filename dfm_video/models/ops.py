"""Small elementwise ops of the DiT, as plain torch functions.

These are the ops a fused kernel can replace (`model_cfg.kernels`); the Triton versions live in
`kernels/` and must match these references. Shape legend: B batch, N tokens, D width,
Hd heads, Dh head dim.

3D axial RoPE convention (what a kernel must reproduce):
- The head dim Dh is split into three even sections (d_t, d_h, d_w) for the token-grid axes
  (t, h, w): d_h = d_w = 2 * (Dh // 6), d_t = Dh - d_h - d_w (t takes the remainder).
- Positions are the integer token-grid coordinates (0..Tg-1, 0..Hg-1, 0..Wg-1), row-major over
  (t, h, w), the same order as the patchified token sequence.
- Within a section of size d with position p: inverse frequencies f_i = theta^(-2i/d),
  i = 0..d/2-1, angles a_i = p * f_i. The section is split into halves (x1, x2) of d/2 each
  ("rotate-half", GPT-NeoX/Llama style, not interleaved pairs) and rotated:
      out1 = x1 * cos(a) - x2 * sin(a),   out2 = x2 * cos(a) + x1 * sin(a).
- Tables `cos`, `sin` are (N, Dh): per section [cos(a), cos(a)] (and sin) so that
  out = x * cos + rotate_half_sections(x) * sin. They are built in float32 once per
  (grid, head_dim, theta, device, dtype) and cached; the rotation itself runs in float32 and
  casts back to the input dtype (bf16 angles lose the relative-position property quickly).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half types, the input's own dtype for float32/float64 (float64 tests stay exact)."""
    return torch.promote_types(x.dtype, torch.float32)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x (B, N, D), shift/scale (B, D) -> x * (1 + scale) + shift."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim without affine parameters (adaLN supplies scale and shift)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dim, computed in float32 (at least): x * rsqrt(mean(x^2) + eps) * weight."""
    xf = x.to(_compute_dtype(x))
    out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.to(xf.dtype)
    return out.to(x.dtype)


def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """adaLN-zero residual: x (B, N, D) + gate (B, D) * y (B, N, D)."""
    return x + gate.unsqueeze(1) * y


def rope_sections(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim into even (d_t, d_h, d_w) RoPE sections (see module docstring)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def _axis_angles(n: int, dim: int, theta: float, device: torch.device) -> Tensor:
    """(n, dim/2) angles p * theta^(-2i/dim) for integer positions p = 0..n-1, in float64."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    pos = torch.arange(n, dtype=torch.float64, device=device)
    return pos[:, None] * inv_freq[None, :]


@functools.lru_cache(maxsize=32)
def _rope_tables_cached(
    grid: tuple[int, int, int], head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    # Built outside inference mode and without grad so a table first made while sampling can be
    # reused by a training step (inference tensors cannot be saved for backward).
    with torch.inference_mode(False), torch.no_grad():
        Tg, Hg, Wg = grid
        parts = []
        for axis, (n, d) in enumerate(zip(grid, rope_sections(head_dim))):
            ang = _axis_angles(n, d, theta, device)  # (n, d/2)
            shape = [1, 1, 1, d // 2]
            shape[axis] = n
            ang = ang.view(shape).expand(Tg, Hg, Wg, d // 2)
            parts.append(torch.cat([ang, ang], dim=-1))  # both halves of the section share angles
        ang = torch.cat(parts, dim=-1).reshape(Tg * Hg * Wg, head_dim)  # (N, Dh)
        return ang.cos().to(dtype), ang.sin().to(dtype)


def rope_tables(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """cos, sin tables (N, Dh) for a token grid (Tg, Hg, Wg), N = Tg * Hg * Wg; cached."""
    grid = tuple(int(g) for g in grid)
    return _rope_tables_cached(grid, int(head_dim), float(theta), torch.device(device), dtype)


def rotate_half_sections(x: Tensor, sections: tuple[int, int, int]) -> Tensor:
    """Per section (x1, x2) -> (-x2, x1) over the last dim."""
    out = []
    for part in x.split(list(sections), dim=-1):
        x1, x2 = part.chunk(2, dim=-1)
        out.extend([-x2, x1])
    return torch.cat(out, dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys x (B, Hd, N, Dh) by the tables (N, Dh); float32 (at least) math, x's dtype out."""
    sections = rope_sections(x.shape[-1])
    xf = x.to(_compute_dtype(x))
    out = xf * cos.to(xf.dtype) + rotate_half_sections(xf, sections) * sin.to(xf.dtype)
    return out.to(x.dtype)
