"""Triton kernel of the split-pair rotate-half RoPE on q and k (imported lazily: needs triton).

One launch rotates q and k: program (i, j) owns head i % Hmax of batch entry i // Hmax and
BLOCK_N tokens starting at j * BLOCK_N; it loads that cos/sin tile once and applies it to q's
head (if i % Hmax < Hq) and to k's head (if i % Hmax < Hk). Heads vary fastest in the grid, so
programs running together share table tiles through L1/L2. Inputs may be strided (last dim
contiguous); outputs are contiguous (B, H, N, hd). With INVERSE the rotation runs backwards
(sin -> -sin), which is the gradient of the forward rotation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton import next_pow2, num_warps_for


@triton.jit
def _rotate_head(SRC, DST, src_off, dst_off, s_n, d_n, rows, cols, mask, c, s, half):
    src = SRC + src_off + rows[:, None] * s_n + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    dst = DST + dst_off + rows[:, None] * d_n + cols[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(DST.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * c + x1 * s).to(DST.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    Q,
    K,
    QO,
    KO,
    COS,
    SIN,
    n_q_heads,
    n_k_heads,
    n_heads,
    N,
    half,
    q_sb,
    q_sh,
    q_sn,
    k_sb,
    k_sh,
    k_sn,
    qo_sb,
    qo_sh,
    qo_sn,
    ko_sb,
    ko_sh,
    ko_sn,
    INVERSE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    pid = tl.program_id(0)
    b = (pid // n_heads).to(tl.int64)  # int64: b * batch stride may exceed 2**31
    h = (pid % n_heads).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (rows < N)[:, None] & (cols < half)[None, :]
    tab = rows[:, None] * half + cols[None, :]
    c = tl.load(COS + tab, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + tab, mask=mask, other=0.0).to(tl.float32)
    if INVERSE:
        s = -s
    if h < n_q_heads:
        _rotate_head(Q, QO, b * q_sb + h * q_sh, b * qo_sb + h * qo_sh, q_sn, qo_sn, rows, cols, mask, c, s, half)
    if h < n_k_heads:
        _rotate_head(K, KO, b * k_sb + h * k_sh, b * ko_sb + h * ko_sh, k_sn, ko_sn, rows, cols, mask, c, s, half)


def _inner_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotate(
    q: torch.Tensor | None, k: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, inverse: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Rotate q (B, Hq, N, hd) and k (B, Hk, N, hd); either may be None (e.g. a missing grad)."""
    ref = q if q is not None else k
    if ref is None:
        return None, None
    B, _, N, hd = ref.shape
    q = _inner_contiguous(q) if q is not None else None
    k = _inner_contiguous(k) if k is not None else None
    qo = torch.empty(q.shape, device=q.device, dtype=q.dtype) if q is not None else None
    ko = torch.empty(k.shape, device=k.device, dtype=k.dtype) if k is not None else None
    n_q = q.shape[1] if q is not None else 0
    n_k = k.shape[1] if k is not None else 0
    # A missing tensor gets 0 heads, so its pointer (any valid one) is never dereferenced.
    q_, qo_ = (q, qo) if q is not None else (k, ko)
    k_, ko_ = (k, ko) if k is not None else (q, qo)
    half = hd // 2
    block_half = next_pow2(half)
    block_n = max(1, min(64, 2048 // block_half))
    n_heads = max(n_q, n_k)
    grid = (B * n_heads, triton.cdiv(N, block_n))
    _rope_kernel[grid](
        q_,
        k_,
        qo_,
        ko_,
        cos,
        sin,
        n_q,
        n_k,
        n_heads,
        N,
        half,
        q_.stride(0),
        q_.stride(1),
        q_.stride(2),
        k_.stride(0),
        k_.stride(1),
        k_.stride(2),
        qo_.stride(0),
        qo_.stride(1),
        qo_.stride(2),
        ko_.stride(0),
        ko_.stride(1),
        ko_.stride(2),
        INVERSE=inverse,
        BLOCK_N=block_n,
        BLOCK_HALF=block_half,
        num_warps=num_warps_for(2 * block_n * block_half),
    )
    return qo, ko
