"""Fine-tuning a flow-matching model with DFM: the paper's initialisation (DFM_METHOD.md 6b) reproduces
the pretrained model on the coarse stage bit for bit in float64, with and without the coarse stage's
input upsampling (`model.upsample_factors`), whose FLOPs the analytic count includes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.models import DiT3D, model_flops, parameter_counts
from dfm_video.models.patch import downsample_mean, upsample_nearest
from dfm_video.train.init_map import map_state

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

C, K = 4, 10
FM = DFMConfig(num_stages=1, factors=[], stage_probs=[1.0])
DFM2 = DFMConfig(num_stages=2, factors=[(1, 2, 2)], stage_probs=[0.9, 0.1])


def cfg(patch=(1, 2, 2), **kw) -> ModelConfig:
    base = dict(depth=2, hidden_size=48, num_heads=4, in_channels=C, num_classes=K, attention="sdpa", kernels="torch")
    base.update(kw)
    return ModelConfig(patch_size=patch, **base)


def pretrained(model_cfg: ModelConfig) -> DiT3D:
    """A flow-matching model with every weight random (its zero-initialised heads would hide errors)."""
    torch.manual_seed(0)
    model = DiT3D(model_cfg, FM).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model.eval()


def fine_tune_init(fm: DiT3D, model_cfg: ModelConfig) -> tuple[DiT3D, object]:
    torch.manual_seed(5)  # another init than the source: every copied tensor must come from it
    dfm = DiT3D(model_cfg, DFM2).double().eval()
    state, summary = map_state(dfm.state_dict(), fm.state_dict(), "pretrained")
    dfm.load_state_dict(state)
    return dfm, summary


def coarse_only_inputs(coarse_shape, fine_shape, B: int = 3):
    g = torch.Generator().manual_seed(7)
    coarse = torch.randn(B, C, *coarse_shape, generator=g, dtype=torch.float64)
    fine = torch.randn(B, C, *fine_shape, generator=g, dtype=torch.float64)  # masked: any values
    t = torch.stack(
        [torch.rand(B, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)], 1
    )
    active = torch.tensor([[True, False]] * B)
    y = torch.tensor([1, 4, K][:B])  # K = the null class
    return coarse, fine, t, active, y


def test_coarse_stage_equals_pretrained_model_bitwise_same_patch() -> None:
    # Pretrained patch (1, 1, 1) at the coarse resolution: the DFM model's coarse stage has the same patch.
    fm = pretrained(cfg(patch=(1, 1, 1)))
    dfm, summary = fine_tune_init(fm, cfg(patch=(1, 2, 2)))
    coarse, fine, t, active, y = coarse_only_inputs((3, 4, 4), (3, 8, 8))
    with torch.no_grad():
        v_dfm = dfm([coarse, fine], t, active, y)
        v_fm = fm([coarse], t[:, :1], torch.ones(3, 1, dtype=torch.bool), y)[0]
    assert torch.equal(v_dfm[0], v_fm)
    assert v_fm.abs().max() > 0.1  # a real function, not zeros
    assert torch.count_nonzero(v_dfm[1]) == 0  # the fine head starts at zero
    assert "stage_embedder.weight" in summary.zeroed
    assert {"patch_embed.1.weight", "t_embedders.1.mlp.2.weight", "final_layers.1.linear.weight"} <= set(summary.zeroed)
    assert summary.new == ["t_embedders.1.mlp.0.weight", "t_embedders.1.mlp.0.bias"]  # gradients must reach it
    assert "blocks.0.attn.qkv.weight" in summary.copied and "final_layers.0.linear.weight" in summary.copied


def test_upsample_down_is_an_exact_left_inverse() -> None:
    x = torch.randn(2, 3, 2, 5, 7, dtype=torch.float64) * 1e3 + 1 / 3
    up = upsample_nearest(x, (1, 2, 2))
    assert up.shape == (2, 3, 2, 10, 14) and torch.equal(up[..., ::2, 1::2], x)
    assert torch.equal(downsample_mean(up, (1, 2, 2)), x)
    # equals 2x2 average pooling (the pyramid's downsampling) up to rounding
    y = torch.randn(2, 3, 2, 6, 8, dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool3d(y, (1, 2, 2))
    torch.testing.assert_close(downsample_mean(y, (1, 2, 2)), pooled, rtol=1e-15, atol=1e-15)


def test_coarse_stage_with_upsampling_equals_pretrained_model_bitwise() -> None:
    # k700's case: pretrained patch (1, 2, 2) on the full latent; the coarse stage (patch (1, 1, 1), half
    # resolution) is upsampled 2x nearest and patchified with the pretrained (1, 2, 2) patch.
    fm = pretrained(cfg(patch=(1, 2, 2)))
    dfm, _ = fine_tune_init(fm, cfg(patch=(1, 2, 2), upsample_factors=[(1, 2, 2), (1, 1, 1)]))
    assert dfm.embed_patches == [(1, 2, 2), (1, 2, 2)]
    coarse, fine, t, active, y = coarse_only_inputs((3, 4, 4), (3, 8, 8))
    with torch.no_grad():
        v_dfm = dfm([coarse, fine], t, active, y)
        # the pretrained model on the nearest-upsampled coarse input, its output averaged back down
        v_fm = fm([upsample_nearest(coarse, (1, 2, 2))], t[:, :1], torch.ones(3, 1, dtype=torch.bool), y)[0]
    assert v_dfm[0].shape == coarse.shape
    assert torch.equal(v_dfm[0], downsample_mean(v_fm, (1, 2, 2)))
    assert v_fm.abs().max() > 0.1


def test_without_upsampling_a_pretrained_larger_patch_is_refused_naming_shapes() -> None:
    fm = pretrained(cfg(patch=(1, 2, 2)))
    dfm = DiT3D(cfg(patch=(1, 2, 2)), DFM2)
    with pytest.raises(ValueError, match=r"patch_embed\.0\.weight.*\(48, 16\).*\(48, 4\)"):
        map_state(dfm.state_dict(), fm.state_dict(), "pretrained")


def test_upsample_factors_flops_are_counted() -> None:
    plain, up = cfg(patch=(1, 2, 2)), cfg(patch=(1, 2, 2), upsample_factors=[(1, 2, 2), (1, 1, 1)])
    shape = (3, 8, 8)
    N, D = 3 * 4 * 4, 48
    # coarse embedder and head: 4x larger patches (C * 1 = 4 -> C * 4 = 16 values per token)
    assert model_flops(up, DFM2, shape) - model_flops(plain, DFM2, shape) == 2 * (2 * N * D * (16 - 4))
    model = DiT3D(up, DFM2)
    levels = [torch.randn(1, C, 3, 4, 4), torch.randn(1, C, *shape)]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        model(levels, torch.rand(1, 2), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]))
    counted = fc.get_total_flops()
    assert abs(model_flops(up, DFM2, shape) - counted) / counted < 0.02
    # the extra parameters are the coarse stage's larger embedder and head
    assert parameter_counts(up, DFM2)["total"] > parameter_counts(plain, DFM2)["total"]


def test_upsample_factors_validated() -> None:
    with pytest.raises(ValueError, match="upsample_factors has 1 entries; 2 stages"):
        DiT3D(cfg(upsample_factors=[(1, 2, 2)]), DFM2)
    with pytest.raises(ValueError, match=r"upsample_factors\[0\]"):
        DiT3D(cfg(upsample_factors=[(2, 2, 2), (1, 1, 1)]), DFM2)
