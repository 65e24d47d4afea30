"""Triton kernels of the gated residual h = x + gate * y (imported lazily: needs triton).

Layout: x, y, h contiguous (B, N, D); gate contiguous (B, D). Elementwise, so D is tiled too
(BLOCK_D <= 128: DiT widths 768/1152/2048 are multiples of 128, no lanes wasted).
Backward: dx = dh (returned as is, no kernel), dy = gate * dh, dgate = sum_n dh * y through
per-program partial sums in a (B, n_split, D) float32 buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton import next_pow2, num_warps_for, row_split


@triton.jit
def _fwd_kernel(X, GATE, Y, H, N, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    mask = (rows < N)[:, None] & col_mask[None, :]
    offs = (b * N + rows)[:, None] * D + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(GATE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(H + offs, (x + gate[None, :] * y).to(H.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    DH, GATE, Y, DY, DGATE_PART, N, D, rows_per_program, n_split, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    split = tl.program_id(0)
    b = tl.program_id(2).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    gate = tl.load(GATE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    row_start = split * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    for m0 in range(row_start, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        offs = (b * N + rows)[:, None] * D + cols[None, :]
        dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(dh * y, axis=0)
        tl.store(DY + offs, (dh * gate[None, :]).to(DY.dtype.element_ty), mask=mask)
    tl.store(DGATE_PART + (b * n_split + split) * D + cols, acc, mask=col_mask)


def _blocks(D: int) -> tuple[int, int]:
    block_d = min(128, next_pow2(D))
    return max(1, 4096 // block_d), block_d


def forward(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """h (B, N, D) in x.dtype."""
    B, N, D = x.shape
    h = torch.empty_like(x)
    block_m, block_d = _blocks(D)
    grid = (triton.cdiv(N, block_m), triton.cdiv(D, block_d), B)
    _fwd_kernel[grid](x, gate, y, h, N, D, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps_for(block_m * block_d))
    return h


def backward(dh: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy in y.dtype, dgate in gate.dtype)."""
    B, N, D = y.shape
    block_m, block_d = _blocks(D)
    # The backward walks rows in a loop, so a shorter row block keeps the loop body light.
    block_m = max(1, block_m // 4)
    rows_per, n_split = row_split(N, block_m, B * triton.cdiv(D, block_d), y.device)
    dy = torch.empty_like(y)
    part = torch.empty((B, n_split, D), device=y.device, dtype=torch.float32)
    grid = (n_split, triton.cdiv(D, block_d), B)
    _bwd_kernel[grid](
        dh,
        gate,
        y,
        dy,
        part,
        N,
        D,
        rows_per,
        n_split,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps_for(block_m * block_d),
    )
    return dy, part.sum(dim=1).to(gate.dtype)
