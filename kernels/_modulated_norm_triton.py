"""Triton kernels of the adaLN modulated norm, optionally fused with the gated residual before it.

Imported lazily (needs triton). Layout: x, y, h, out are contiguous (B, N, D); shift, scale,
gate are contiguous (B, D). Each program owns BLOCK_M whole rows of ONE sample, so it loads that
sample's shift/scale/gate once. All arithmetic is float32; results are rounded once on store.

Forward  (HAS_RESIDUAL):  h = x + gate * y  (stored, rounded to h's dtype, then re-read as the
                          norm input, exactly like the reference)
         out = (1 + scale) * norm(h) + shift,  norm = LayerNorm (no affine) or RMSNorm
Backward (g = dout, xhat = norm(h), dxhat = g * (1 + scale), rstd = 1 / sqrt(var + eps)):
         dh = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))   (LayerNorm)
         dh = rstd * (dxhat - xhat * mean(dxhat * xhat))                 (RMSNorm)
         dh += dh_ext (the gradient reaching h from the residual stream), dx = dh, dy = gate * dh
         dshift = sum_n g, dscale = sum_n g * xhat, dgate = sum_n dh * y: per-program partial
         sums in a (B, n_split, D) float32 buffer, finished by one small torch sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton import next_pow2, num_warps_for, row_split


@triton.jit
def _fwd_kernel(
    X,
    Y,
    GATE,
    H,
    SHIFT,
    SCALE,
    OUT,
    MEAN,
    RSTD,
    N,
    D,
    eps,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)  # int64: B*N*D may exceed 2**31
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    offs = (b * N + rows)[:, None] * D + cols[None, :]

    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(GATE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
        h = (x + gate[None, :] * y).to(H.dtype.element_ty)
        tl.store(H + offs, h, mask=mask)
        x = h.to(tl.float32)

    if IS_RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(MEAN + b * N + rows, mean, mask=row_mask)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    tl.store(RSTD + b * N + rows, rstd, mask=row_mask)

    shift = tl.load(SHIFT + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    out = xc * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    DOUT,
    DH_EXT,
    XN,
    Y,
    GATE,
    SCALE,
    MEAN,
    RSTD,
    DX,
    DY,
    DSHIFT_PART,
    DSCALE_PART,
    DGATE_PART,
    N,
    D,
    rows_per_program,
    n_split,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_DH_EXT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    split = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    scale1 = 1.0 + tl.load(SCALE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        gate = tl.load(GATE + b * D + cols, mask=col_mask, other=0.0).to(tl.float32)
    acc_dshift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dscale = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dgate = tl.zeros([BLOCK_D], dtype=tl.float32)

    row_start = split * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, N)
    for m0 in range(row_start, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        offs = (b * N + rows)[:, None] * D + cols[None, :]

        g = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        xn = tl.load(XN + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + b * N + rows, mask=row_mask, other=0.0)
        if IS_RMS:
            xhat = xn * rstd[:, None]
        else:
            mean = tl.load(MEAN + b * N + rows, mask=row_mask, other=0.0)
            xhat = tl.where(mask, (xn - mean[:, None]) * rstd[:, None], 0.0)
        acc_dshift += tl.sum(g, axis=0)
        acc_dscale += tl.sum(g * xhat, axis=0)

        dxhat = g * scale1[None, :]
        c2 = tl.sum(dxhat * xhat, axis=1) / D
        if IS_RMS:
            dh = (dxhat - xhat * c2[:, None]) * rstd[:, None]
        else:
            c1 = tl.sum(dxhat, axis=1) / D
            dh = (dxhat - c1[:, None] - xhat * c2[:, None]) * rstd[:, None]
        if HAS_DH_EXT:
            dh += tl.load(DH_EXT + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            acc_dgate += tl.sum(dh * y, axis=0)
            tl.store(DY + offs, (dh * gate[None, :]).to(DY.dtype.element_ty), mask=mask)
        tl.store(DX + offs, dh.to(DX.dtype.element_ty), mask=mask)

    part = (b * n_split + split) * D + cols
    tl.store(DSHIFT_PART + part, acc_dshift, mask=col_mask)
    tl.store(DSCALE_PART + part, acc_dscale, mask=col_mask)
    if HAS_RESIDUAL:
        tl.store(DGATE_PART + part, acc_dgate, mask=col_mask)


def _blocks(D: int) -> tuple[int, int]:
    block_d = next_pow2(D)
    # ~4k elements per tile: enough bytes in flight per program without spilling registers.
    block_m = max(1, min(16, 4096 // block_d))
    return block_m, block_d


def forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    is_rms: bool,
    eps: float,
    gate: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns (h or None, out, mean, rstd); mean/rstd are (B, N) float32
    (mean is an empty placeholder for RMSNorm)."""
    B, N, D = x.shape
    has_res = gate is not None
    out = torch.empty_like(x)
    h = torch.empty_like(x) if has_res else None
    rstd = torch.empty((B, N), device=x.device, dtype=torch.float32)
    mean = rstd.new_empty((0,) if is_rms else (B, N))
    block_m, block_d = _blocks(D)
    grid = (triton.cdiv(N, block_m), B)
    _fwd_kernel[grid](
        x,
        y if has_res else x,
        gate if has_res else shift,
        h if has_res else out,
        shift,
        scale,
        out,
        rstd if is_rms else mean,
        rstd,
        N,
        D,
        eps,
        IS_RMS=is_rms,
        HAS_RESIDUAL=has_res,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps_for(block_m * block_d),
    )
    return h, out, mean, rstd


def backward(
    dout: torch.Tensor,
    dh_ext: torch.Tensor | None,
    xn: torch.Tensor,
    scale: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    is_rms: bool,
    shift_dtype: torch.dtype,
    gate: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch the backward. `xn` is the norm's input (x, or h when fused).

    Returns (dx, dy or None, dshift, dscale, dgate or None); dx is the gradient reaching x
    (and h's full gradient when fused, as dx == dh).
    """
    B, N, D = xn.shape
    has_res = gate is not None
    block_m, block_d = _blocks(D)
    rows_per, n_split = row_split(N, block_m, B, xn.device)
    dx = torch.empty_like(xn)
    dy = torch.empty_like(y) if has_res else None
    parts = torch.empty((3 if has_res else 2, B, n_split, D), device=xn.device, dtype=torch.float32)
    _bwd_kernel[(n_split, B)](
        dout,
        dh_ext if dh_ext is not None else dout,
        xn,
        y if has_res else xn,
        gate if has_res else scale,
        scale,
        rstd if is_rms else mean,
        rstd,
        dx,
        dy if has_res else dx,
        parts[0],
        parts[1],
        parts[2] if has_res else parts[1],
        N,
        D,
        rows_per,
        n_split,
        IS_RMS=is_rms,
        HAS_RESIDUAL=has_res,
        HAS_DH_EXT=dh_ext is not None,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps_for(block_m * block_d),
    )
    sums = parts.sum(dim=2)  # (k, B, D): the tiny cross-program reduction
    dshift = sums[0].to(shift_dtype)
    dscale = sums[1].to(scale.dtype)
    dgate = sums[2].to(gate.dtype) if has_res else None
    return dx, dy, dshift, dscale, dgate
