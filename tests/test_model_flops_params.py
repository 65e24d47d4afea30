"""Analytic FLOPs vs FlopCounterMode; size registry and DFM's parameter overhead."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.dfm import decompose
from dfm_video.models import SIZES, build_model, model_flops, parameter_counts, training_flops

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


C = 4

CASES = [
    # (dfm config, base patch, finest latent (T, H, W))
    (DFMConfig(num_stages=2, factors=[(1, 2, 2)]), (1, 2, 2), (5, 8, 8)),
    (DFMConfig(num_stages=2, factors=[(2, 2, 2)], temporal_mode="causal"), (2, 2, 2), (13, 8, 8)),
    (DFMConfig(num_stages=2, factors=[(1, 2, 2)]), (1, 2, 2), (1, 8, 8)),
    (DFMConfig(num_stages=1, factors=[], stage_probs=[1.0]), (1, 2, 2), (5, 8, 8)),
]


def tiny_cfg(patch) -> ModelConfig:
    return ModelConfig(
        depth=2, hidden_size=64, num_heads=4, in_channels=C, num_classes=10, patch_size=patch, attention="sdpa"
    )


def _inputs(dfm_cfg: DFMConfig, shape):
    torch.manual_seed(0)
    levels = decompose(torch.randn(1, C, *shape), dfm_cfg.factors, dfm_cfg.temporal_mode)
    S = dfm_cfg.num_stages
    return levels, torch.rand(1, S), torch.ones(1, S, dtype=torch.bool), torch.tensor([3])


@pytest.mark.parametrize("dfm_cfg,patch,shape", CASES)
def test_model_flops_matches_flop_counter(dfm_cfg: DFMConfig, patch, shape) -> None:
    model_cfg = tiny_cfg(patch)
    model = build_model(model_cfg, dfm_cfg)
    levels, t, active, y = _inputs(dfm_cfg, shape)
    # The math SDPA kernel decomposes into matmuls FlopCounterMode counts (the fused CPU kernel
    # is not registered with it and would count 0).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        model(levels, t, active, y)
    counted = fc.get_total_flops()
    analytic = model_flops(model_cfg, dfm_cfg, shape)
    assert counted > 0
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)

    # training = 3x forward (backward = 2x), within 2%: only the unneeded input grads of the
    # first layers are skipped by autograd
    levels = [lv.requires_grad_(False) for lv in levels]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        sum(o.sum() for o in model(levels, t, active, y)).backward()
    counted = fc.get_total_flops()
    assert abs(training_flops(model_cfg, dfm_cfg, shape) - counted) / counted < 0.02


def test_model_flops_xl_headline_shape() -> None:
    # DiT3D-XL, 13 latent frames x 32 x 32 tokens per frame (64 x 64 latent, patch (1, 2, 2)):
    # dominated by 28 blocks of 24 N D^2 + 4 N^2 D matmul FLOPs.
    cfg, dfm_cfg = ModelConfig(name="DiT3D-XL"), DFMConfig()
    N, D, L = 13 * 32 * 32, 1152, 28
    trunk = L * (24 * N * D * D + 4 * N * N * D)
    f = model_flops(cfg, dfm_cfg, (13, 64, 64))
    assert trunk < f < 1.01 * trunk


def test_registry_sizes_are_dits() -> None:
    assert {k: (v.depth, v.hidden_size, v.num_heads) for k, v in SIZES.items()} == {
        "DiT3D-S": (12, 384, 6),
        "DiT3D-B": (12, 768, 12),
        "DiT3D-L": (24, 1024, 16),
        "DiT3D-XL": (28, 1152, 16),
    }


def test_meta_count_equals_real_model() -> None:
    cfg, dfm_cfg = tiny_cfg((1, 2, 2)), DFMConfig()
    real = sum(p.numel() for p in build_model(cfg, dfm_cfg).parameters())
    assert parameter_counts(cfg, dfm_cfg)["total"] == real


def _analytic_extra(D: int, C: int, coarse_patch_volume: int, stages: int) -> int:
    """Independent count of what a 2-stage model adds: one patch embedder, timestep MLP and head
    per extra stage, plus the stage embedding (S x D)."""
    v = coarse_patch_volume * C
    patch_embed = v * D + D
    t_embed = 256 * D + D + D * D + D
    head = D * 2 * D + 2 * D + D * v + v
    return (stages - 1) * (patch_embed + t_embed + head) + stages * D


@pytest.mark.parametrize("name", ["DiT3D-XL", "DiT3D-B"])
def test_dfm_parameter_overhead(name: str) -> None:
    cfg, dfm_cfg = ModelConfig(name=name), DFMConfig()  # 2 stages, factor (1, 2, 2), C = 16
    counts = parameter_counts(cfg, dfm_cfg)
    D = SIZES[name].hidden_size
    assert counts["extra"] == _analytic_extra(D, cfg.in_channels, 1, 2)
    assert counts["total"] == counts["single_stage"] + counts["extra"]
    if name == "DiT3D-XL":
        assert counts["extra_pct"] < 1.0  # paper: +0.6% at DiT-XL
        assert math.isclose(counts["total"] / 1e6, 678.9, abs_tol=0.1)
