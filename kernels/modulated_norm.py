"""adaLN modulated normalisation, alone or fused with the gated residual that precedes it.

    modulated_norm(x, shift, scale)                 out = (1 + scale) * norm(x) + shift
    gated_residual_modulated_norm(x, gate, y, ...)  h = x + gate * y;  out = (1 + scale) * norm(h) + shift

Shapes: x, y, h, out (B, N, D) tokens; shift, scale, gate (B, D) per sample, broadcast over the
N tokens. norm is LayerNorm without affine weights (`norm="layer"`) or RMSNorm without weight
(`norm="rms"`), over D, with eps inside the square root (eps=1e-6 in the DiT).

Precision (the references define it): everything is computed in float32 (float64 stays float64)
and rounded once to x's dtype; h is rounded to x's dtype before it is normalised, so a caller
that keeps h as the residual stream normalises exactly what it stores.

The fused op is what a DiT block wants between its sub-layers:
    h, out = gated_residual_modulated_norm(x, gate_msa, attn_out, shift_mlp, scale_mlp)
    x = h + gate_mlp * mlp(out)      # <- the next block's fused op takes over here
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels._triton import kernel_module, resolve_backend

Norm = Literal["layer", "rms"]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _norm_reference(x: Tensor, norm: Norm, eps: float) -> Tensor:
    d = x.shape[-1:]
    return F.rms_norm(x, d, eps=eps) if norm == "rms" else F.layer_norm(x, d, eps=eps)


def modulated_norm_reference(
    x: Tensor, shift: Tensor, scale: Tensor, norm: Norm = "layer", eps: float = 1e-6
) -> Tensor:
    """Pure-torch reference. x (B, N, D); shift, scale (B, D) -> (B, N, D) in x.dtype."""
    op = _opmath(x.dtype)
    xn = _norm_reference(x.to(op), norm, eps)
    out = xn * (1 + scale.to(op)).unsqueeze(1) + shift.to(op).unsqueeze(1)
    return out.to(x.dtype)


def gated_residual_modulated_norm_reference(
    x: Tensor,
    gate: Tensor,
    y: Tensor,
    shift: Tensor,
    scale: Tensor,
    norm: Norm = "layer",
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Pure-torch reference. x, y (B, N, D); gate, shift, scale (B, D) -> (h, out), both (B, N, D)."""
    op = _opmath(x.dtype)
    h = (x.to(op) + gate.to(op).unsqueeze(1) * y.to(op)).to(x.dtype)
    return h, modulated_norm_reference(h, shift, scale, norm, eps)


class _ModulatedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor, scale: Tensor, is_rms: bool, eps: float) -> Tensor:
        tri = kernel_module("_modulated_norm_triton")

        x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
        _, out, mean, rstd = tri.forward(x, shift, scale, is_rms, eps)
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.is_rms, ctx.shift_dtype = is_rms, shift.dtype
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        tri = kernel_module("_modulated_norm_triton")

        x, scale, mean, rstd = ctx.saved_tensors
        dx, _, dshift, dscale, _ = tri.backward(
            dout.contiguous(), None, x, scale, mean, rstd, ctx.is_rms, ctx.shift_dtype
        )
        return dx, dshift, dscale, None, None


class _GatedResidualModulatedNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, gate: Tensor, y: Tensor, shift: Tensor, scale: Tensor, is_rms: bool, eps: float
    ) -> tuple[Tensor, Tensor]:
        tri = kernel_module("_modulated_norm_triton")

        x, gate, y = x.contiguous(), gate.contiguous(), y.contiguous()
        shift, scale = shift.contiguous(), scale.contiguous()
        h, out, mean, rstd = tri.forward(x, shift, scale, is_rms, eps, gate=gate, y=y)
        ctx.save_for_backward(h, y, gate, scale, mean, rstd)
        ctx.is_rms, ctx.shift_dtype = is_rms, shift.dtype
        # h's gradient is often None (e.g. the last block): do not make autograd build zeros.
        ctx.set_materialize_grads(False)
        return h, out

    @staticmethod
    def backward(ctx, dh: Tensor | None, dout: Tensor | None):
        tri = kernel_module("_modulated_norm_triton")

        h, y, gate, scale, mean, rstd = ctx.saved_tensors
        if dout is None:  # only h was used downstream; rare, so a zero tensor is fine
            dout = torch.zeros_like(h)
        dx, dy, dshift, dscale, dgate = tri.backward(
            dout.contiguous(),
            None if dh is None else dh.contiguous(),
            h,
            scale,
            mean,
            rstd,
            ctx.is_rms,
            ctx.shift_dtype,
            gate=gate,
            y=y,
        )
        return dx, dgate, dy, dshift, dscale, None, None


def _check(x: Tensor, per_sample: dict[str, Tensor], tokens: dict[str, Tensor], norm: str) -> None:
    if norm not in ("layer", "rms"):
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, N, D) tokens, got shape {tuple(x.shape)}")
    B, _, D = x.shape
    for name, t in per_sample.items():
        if tuple(t.shape) != (B, D):
            raise ValueError(f"{name} must be (B, D) = {(B, D)} to match x {tuple(x.shape)}, got {tuple(t.shape)}")
    for name, t in tokens.items():
        if t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")


def modulated_norm(
    x: Tensor, shift: Tensor, scale: Tensor, norm: Norm = "layer", eps: float = 1e-6, backend: str = "auto"
) -> Tensor:
    """(1 + scale) * norm(x) + shift. x (B, N, D); shift, scale (B, D) -> (B, N, D) in x.dtype.

    `backend` is the `kernels` switch (auto|triton|torch, see `kernels.resolve_backend`).
    """
    _check(x, {"shift": shift, "scale": scale}, {}, norm)
    if resolve_backend(backend, x.device) == "torch" or x.numel() == 0:
        return modulated_norm_reference(x, shift, scale, norm, eps)
    return _ModulatedNorm.apply(x, shift, scale, norm == "rms", float(eps))


def gated_residual_modulated_norm(
    x: Tensor,
    gate: Tensor,
    y: Tensor,
    shift: Tensor,
    scale: Tensor,
    norm: Norm = "layer",
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """h = x + gate * y and out = (1 + scale) * norm(h) + shift in one pass; returns (h, out).

    x, y (B, N, D); gate, shift, scale (B, D). h and out are (B, N, D) in x.dtype.
    """
    _check(x, {"gate": gate, "shift": shift, "scale": scale}, {"y": y}, norm)
    if resolve_backend(backend, x.device) == "torch" or x.numel() == 0:
        return gated_residual_modulated_norm_reference(x, gate, y, shift, scale, norm, eps)
    return _GatedResidualModulatedNorm.apply(x, gate, y, shift, scale, norm == "rms", float(eps))
