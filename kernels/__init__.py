"""Fused ops for the DiT3D hot path: Triton kernels with pure-torch references.

Each op has a reference (`*_reference`, the single source of truth for its math and precision),
a `torch.autograd.Function` running Triton kernels forward and backward, and a public function
taking `backend`, the `kernels: auto|triton|torch` switch (see `resolve_backend`):
    auto   -> Triton on CUDA tensors when triton is importable, the reference otherwise
    triton -> Triton, or a RuntimeError naming the missing package / device
    torch  -> the reference
Importing this package needs only torch; triton is imported on the first Triton call.
This package imports nothing from `dfm_video`. See docs/kernels.md.
"""

from kernels._triton import resolve_backend, triton_unavailable_reason
from kernels.gated_residual import gated_residual, gated_residual_reference
from kernels.modulated_norm import (
    gated_residual_modulated_norm,
    gated_residual_modulated_norm_reference,
    modulated_norm,
    modulated_norm_reference,
)
from kernels.rope import (
    apply_rope,
    apply_rope_reference,
    build_rope_3d_tables,
    rope_axis_pairs,
    rope_tables_from_positions,
)

__all__ = [
    "apply_rope",
    "apply_rope_reference",
    "build_rope_3d_tables",
    "gated_residual",
    "gated_residual_modulated_norm",
    "gated_residual_modulated_norm_reference",
    "gated_residual_reference",
    "modulated_norm",
    "modulated_norm_reference",
    "resolve_backend",
    "rope_axis_pairs",
    "rope_tables_from_positions",
    "triton_unavailable_reason",
]
