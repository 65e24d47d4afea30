"""3D axial rotary position embedding (RoPE) for q and k, in one pass.

Convention (the reference below is the single source of truth):
- q (B, Hq, N, hd), k (B, Hk, N, hd): the layout SDPA takes; Hk may differ from Hq (GQA).
  N = T*H*W tokens in row-major (t, h, w) order, the order the patchified grid is flattened in.
- Rotate-half on SPLIT pairs (GPT-NeoX / Llama style, not Flux's interleaved pairs): with
  x1 = x[..., :hd/2], x2 = x[..., hd/2:], pair i is (x1[i], x2[i]) and
      out = cat(x1 * cos - x2 * sin,  x2 * cos + x1 * sin)
  with cos, sin tables of shape (N, hd/2), shared by all batch entries and heads.
- Axis split of the hd/2 pairs: h and w get hd // 6 pairs each, t gets the rest
  (hd/2 - 2 * (hd // 6)); e.g. hd=72 -> (12, 12, 12), hd=64 -> (12, 10, 10), hd=128 -> (22, 21, 21).
  Pair order within the hd/2 columns: t's pairs, then h's, then w's. Each axis with p pairs
  rotates pair j by pos * theta**(-j / p) (the 1D RoPE frequencies of a 2p-dim embedding), pos
  being the integer grid coordinate along that axis.
- Precision: rotations computed in float32 (float64 stays float64), rounded once to q/k's dtype;
  keep the tables in float32 (angles at large positions need it). Tables get no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._triton import kernel_module, resolve_backend


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs given to the (t, h, w) axes; they sum to head_dim // 2."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6 (one pair per axis), got {head_dim}")
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def rope_tables_from_positions(
    positions: Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin (N, head_dim/2) for integer (t, h, w) coordinates `positions` (N, 3).

    Useful when a rank holds a slice of the sequence, or for offset grids; computed in float64.
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3) (t, h, w) coordinates, got {tuple(positions.shape)}")
    pos = positions.to(torch.float64)
    angles = []
    for axis, pairs in enumerate(rope_axis_pairs(head_dim)):
        freqs = theta ** (-torch.arange(pairs, dtype=torch.float64, device=pos.device) / pairs)
        angles.append(pos[:, axis, None] * freqs)  # (N, pairs)
    ang = torch.cat(angles, dim=1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def build_rope_3d_tables(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """cos, sin (T*H*W, head_dim/2) for a (T, H, W) token grid flattened t-major."""
    T, H, W = (int(g) for g in grid)
    coords = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    positions = torch.stack(coords, dim=-1).reshape(-1, 3).to(device)
    return rope_tables_from_positions(positions, head_dim, theta, dtype)


def _rotate_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    op = torch.promote_types(x.dtype, torch.float32)
    x1, x2 = x.to(op).chunk(2, dim=-1)
    c, s = cos.to(op), sin.to(op)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def apply_rope_reference(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Pure-torch reference. q (B, Hq, N, hd), k (B, Hk, N, hd); cos, sin (N, hd/2)."""
    return _rotate_reference(q, cos, sin), _rotate_reference(k, cos, sin)


class _ApplyRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        tri = kernel_module("_rope_triton")

        cos, sin = cos.contiguous(), sin.contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.set_materialize_grads(False)
        return tri.rotate(q, k, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, dq: Tensor | None, dk: Tensor | None):
        tri = kernel_module("_rope_triton")

        cos, sin = ctx.saved_tensors
        # The rotation is orthogonal: its gradient is the inverse rotation (sin -> -sin).
        dq, dk = tri.rotate(dq, dk, cos, sin, inverse=True)
        return dq, dk, None, None


def apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Rotate q (B, Hq, N, hd) and k (B, Hk, N, hd) by cos, sin (N, hd/2); returns (q, k).

    q and k may be strided views (e.g. slices of a fused qkv projection) as long as the last
    dim is contiguous; the Triton path writes contiguous outputs and reads each table tile once
    for q and k. `backend` is the `kernels` switch (auto|triton|torch).
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"q, k must be (B, heads, N, head_dim) with equal B, N, head_dim; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    N, hd = q.shape[2], q.shape[3]
    if hd % 2:
        raise ValueError(f"head_dim must be even for rotate-half RoPE, got {hd}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (N, hd // 2):
            raise ValueError(f"{name} must be (N, head_dim/2) = {(N, hd // 2)}, got {tuple(t.shape)}")
    if resolve_backend(backend, q.device) == "torch" or q.numel() == 0 or k.numel() == 0:
        return apply_rope_reference(q, k, cos, sin)
    if q.dtype != k.dtype:
        raise ValueError(f"the Triton RoPE needs q and k of one dtype, got {q.dtype} and {k.dtype}")
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("the Triton RoPE treats cos/sin as constants; pass tables that do not require grad")
    return _ApplyRope.apply(q, k, cos, sin)
