"""Gated residual h = x + gate * y (adaLN-zero's gated skip connection).

Shapes: x, y, h (B, N, D) tokens; gate (B, D) per sample, broadcast over the N tokens.
Computed in float32 (float64 stays float64) and rounded once to x's dtype.
When a modulated norm follows (every block but the last), prefer
`kernels.gated_residual_modulated_norm`, which fuses both and reads h from registers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels._triton import kernel_module, resolve_backend


def gated_residual_reference(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """Pure-torch reference. x, y (B, N, D); gate (B, D) -> (B, N, D) in x.dtype."""
    op = torch.promote_types(x.dtype, torch.float32)
    return (x.to(op) + gate.to(op).unsqueeze(1) * y.to(op)).to(x.dtype)


class _GatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
        tri = kernel_module("_gated_residual_triton")

        x, gate, y = x.contiguous(), gate.contiguous(), y.contiguous()
        ctx.save_for_backward(gate, y)
        return tri.forward(x, gate, y)

    @staticmethod
    def backward(ctx, dh: Tensor):
        tri = kernel_module("_gated_residual_triton")

        gate, y = ctx.saved_tensors
        dh = dh.contiguous()
        dy, dgate = tri.backward(dh, gate, y)
        return dh, dgate, dy  # dx = dh: handed back as is, no copy


def gated_residual(x: Tensor, gate: Tensor, y: Tensor, backend: str = "auto") -> Tensor:
    """x + gate * y. x, y (B, N, D); gate (B, D) -> (B, N, D) in x.dtype.

    `backend` is the `kernels` switch (auto|triton|torch, see `kernels.resolve_backend`).
    """
    if x.dim() != 3 or y.shape != x.shape:
        raise ValueError(f"x and y must both be (B, N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if tuple(gate.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(f"gate must be (B, D) = {(x.shape[0], x.shape[2])}, got {tuple(gate.shape)}")
    if resolve_backend(backend, x.device) == "torch" or x.numel() == 0:
        return gated_residual_reference(x, gate, y)
    return _GatedResidual.apply(x, gate, y)
