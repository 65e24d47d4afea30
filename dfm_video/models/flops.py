"""Cost accounting of DiT3D: analytic FLOPs for MFU reporting, and parameter counts.

Counts 2 FLOPs per multiply-add of every matmul: Linears (patch embedders, timestep MLPs, adaLN
modulations, qkv/proj, MLP, heads) and the attention matmuls QK^T and AV. Elementwise ops
(norms, RoPE, softmax, GELU, modulation) are ignored, as MFU conventions do. Checked against
`torch.utils.flop_counter.FlopCounterMode` in tests/test_model_flops.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.models.dit import FREQ_DIM, DiT3D
from dfm_video.models.patch import stage_patch_sizes, stage_upsample_factors, token_grid
from dfm_video.models.registry import resolve_size


def model_flops(
    model_cfg: ModelConfig,
    dfm_cfg: DFMConfig,
    latent_shape: Sequence[int],
    in_channels: Optional[int] = None,
) -> int:
    """Forward FLOPs per sample for a finest-stage latent (T, H, W) (all stages computed)."""
    size = resolve_size(model_cfg)
    D, L = size.hidden_size, size.depth
    M = int(D * model_cfg.mlp_ratio)
    C = in_channels if in_channels is not None else model_cfg.in_channels
    patches = stage_patch_sizes(model_cfg.patch_size, dfm_cfg.factors)
    # every stage has the finest stage's token grid (DiT3D.forward checks it)
    N = math.prod(token_grid(tuple(latent_shape), patches[-1], dfm_cfg.temporal_mode))

    # A stage upsampled by u (model.upsample_factors) embeds and predicts patches u times larger: its
    # embedder and head cost prod(u) times more (the nearest upsampling and the mean are elementwise).
    ups = stage_upsample_factors(model_cfg.upsample_factors, len(patches))
    flops = 0
    for p, u in zip(patches, ups):
        out = math.prod(p) * math.prod(u) * C
        flops += 2 * N * out * D  # patch embedder
        flops += 2 * (FREQ_DIM * D + D * D)  # timestep MLP (one vector per sample)
        flops += 2 * D * 2 * D + 2 * N * D * out  # head: adaLN + linear
    per_block = (
        2 * D * 6 * D  # adaLN modulation
        + 2 * N * D * 3 * D  # qkv
        + 2 * 2 * N * N * D  # QK^T and AV over all heads
        + 2 * N * D * D  # out projection
        + 2 * 2 * N * D * M  # MLP
    )
    return flops + L * per_block


def training_flops(
    model_cfg: ModelConfig,
    dfm_cfg: DFMConfig,
    latent_shape: Sequence[int],
    in_channels: Optional[int] = None,
) -> int:
    """Forward + backward FLOPs per sample: 3x forward (activation recomputation not counted)."""
    return 3 * model_flops(model_cfg, dfm_cfg, latent_shape, in_channels)


def _count(model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> int:
    with torch.device("meta"):  # no memory, no init cost: XL builds instantly
        model = DiT3D(model_cfg, dfm_cfg)
    return sum(p.numel() for p in model.parameters())


def parameter_counts(model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> dict[str, float]:
    """Total parameters and DFM's extra over a single-stage model of the same size.

    extra = parameters a plain flow-matching DiT3D (same size, base patch) would not have: the
    coarser stages' patch embedders, timestep embedders and heads, plus the stage embedding.
    Returns {"total", "single_stage", "extra", "extra_pct"}.
    """
    total = _count(model_cfg, dfm_cfg)
    single = _count(
        dataclasses.replace(model_cfg, upsample_factors=None),
        dataclasses.replace(dfm_cfg, num_stages=1, factors=[], stage_probs=[1.0]),
    )
    extra = total - single
    return {"total": total, "single_stage": single, "extra": extra, "extra_pct": 100.0 * extra / single}
