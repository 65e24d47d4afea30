"""Laplacian pyramid: exact round trips, resampling equals the authors' ops, clear shape errors."""

import pytest
import torch
import torch.nn.functional as F

from dfm_video.dfm import decompose, downsample, level_shapes, recompose, upsample

CASES = [
    # (T, H, W), factors, temporal_mode
    ((1, 8, 8), [(1, 2, 2)], "causal"),  # image = video with T = 1
    ((5, 6, 10), [(1, 2, 2)], "causal"),
    ((13, 8, 12), [(2, 2, 2)], "causal"),  # causal VAE latent T = 1 + 12
    ((13, 8, 12), [(2, 2, 2), (1, 2, 2)], "causal"),
    ((9, 8, 8), [(2, 1, 1), (2, 2, 2)], "causal"),
    ((8, 12, 4), [(2, 2, 2), (2, 2, 1)], "uniform"),
    ((3, 14, 6), [(1, 2, 1), (1, 1, 2)], "uniform"),
    ((1, 16, 16), [(1, 2, 2), (1, 2, 2), (1, 2, 2)], "causal"),
    ((7, 5, 3), [], "causal"),  # S = 1: plain flow matching, the pyramid is x itself
]


@pytest.mark.parametrize("shape,factors,mode", CASES)
def test_round_trip_float64(shape, factors, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *shape, generator=g, dtype=torch.float64)
    levels = decompose(x, factors, mode)
    assert len(levels) == len(factors) + 1
    assert [tuple(level.shape[2:]) for level in levels] == level_shapes(shape, factors, mode)
    assert torch.allclose(recompose(levels, factors, mode), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape,factors,mode", CASES)
def test_round_trip_float32(shape, factors, mode):
    x = torch.randn(2, 4, *shape, generator=torch.Generator().manual_seed(1))
    out = recompose(decompose(x, factors, mode), factors, mode)
    assert out.dtype == torch.float32
    assert (out - x).abs().max() < 1e-5


def test_level_shapes_causal_and_uniform():
    assert level_shapes((13, 64, 64), [(2, 2, 2)], "causal") == [(7, 32, 32), (13, 64, 64)]
    assert level_shapes((13, 64, 64), [(2, 2, 2), (2, 2, 2)], "causal") == [(4, 16, 16), (7, 32, 32), (13, 64, 64)]
    assert level_shapes((16, 8, 8), [(2, 1, 1)], "uniform") == [(8, 8, 8), (16, 8, 8)]
    assert level_shapes((1, 8, 8), [(2, 2, 2)], "causal") == [(1, 4, 4), (1, 8, 8)]


def test_spatial_down_equals_bilinear_half_without_antialias():
    x = torch.randn(2, 3, 4, 8, 12, dtype=torch.float64)
    ours = downsample(x, (1, 2, 2))
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    ref = F.interpolate(frames, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=False)
    ref = ref.reshape(b, t, c, h // 2, w // 2).permute(0, 2, 1, 3, 4)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_temporal_down_is_pair_average_and_causal_keeps_first_frame():
    x = torch.randn(1, 2, 5, 4, 4, dtype=torch.float64)
    causal = downsample(x, (2, 1, 1), "causal")
    assert causal.shape[2] == 3
    assert torch.equal(causal[:, :, 0], x[:, :, 0])
    assert torch.allclose(causal[:, :, 1], (x[:, :, 1] + x[:, :, 2]) / 2)
    assert torch.allclose(causal[:, :, 2], (x[:, :, 3] + x[:, :, 4]) / 2)
    even = x[:, :, 1:]
    uniform = downsample(even, (2, 1, 1), "uniform")
    assert torch.allclose(uniform, causal[:, :, 1:])


def test_upsample_is_trilinear_align_corners_false():
    x = torch.randn(1, 2, 4, 3, 5, dtype=torch.float64)
    ours = upsample(x, (2, 2, 2), "uniform")
    ref = F.interpolate(x, scale_factor=(2, 2, 2), mode="trilinear", align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-12)
    causal = upsample(torch.cat([x[:, :, :1], x], dim=2), (2, 2, 2), "causal")
    assert causal.shape[2] == 1 + 8
    assert torch.allclose(causal[:, :, 1:], ref, atol=1e-12)
    first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    assert torch.allclose(causal[:, :, :1], first, atol=1e-12)


def test_coarse_level_is_the_lowpass_and_residuals_carry_no_lowpass_of_a_constant():
    x = torch.full((1, 1, 1, 8, 8), 3.0, dtype=torch.float64)
    levels = decompose(x, [(1, 2, 2)])
    assert torch.allclose(levels[0], torch.full((1, 1, 1, 4, 4), 3.0, dtype=torch.float64))
    assert levels[1].abs().max() < 1e-12


def test_partial_recompose_gives_the_coarse_image():
    # Reference: plain block means of x (the spec's down()), not the module's own downsample.
    # recompose(levels[:2]) telescopes to whatever level 2 was built from, so the coarse level
    # itself is checked too, and a corrupted coarse level must change the partial image.
    x = torch.randn(1, 2, 1, 16, 16, dtype=torch.float64)
    factors = [(1, 2, 2), (1, 2, 2)]
    levels = decompose(x, factors)
    block_mean = lambda k: x.reshape(1, 2, 1, 16 // k, k, 16 // k, k).mean(dim=(4, 6))  # noqa: E731
    assert torch.allclose(levels[0], block_mean(4), atol=1e-12)
    assert torch.allclose(recompose(levels[:1], []), block_mean(4), atol=1e-12)
    two = recompose(levels[:2], factors[:1])
    assert torch.allclose(two, block_mean(2), atol=1e-12)
    bumped = recompose([levels[0] + 1.0, levels[1]], factors[:1])
    assert torch.allclose(bumped, block_mean(2) + 1.0, atol=1e-12)  # bilinear up of a constant is that constant


@pytest.mark.parametrize(
    "shape,factors,mode,match",
    [
        ((4, 7, 8), [(1, 2, 2)], "causal", "H=7"),
        ((4, 8, 9), [(1, 2, 2)], "causal", "W=9"),
        ((12, 8, 8), [(2, 2, 2)], "causal", "T=12"),
        ((13, 8, 8), [(2, 2, 2)], "uniform", "T=13"),
        ((13, 8, 8), [(2, 2, 2), (2, 2, 2), (2, 2, 2)], "causal", "stage 1"),
    ],
)
def test_shapes_that_cannot_be_decomposed_raise(shape, factors, mode, match):
    with pytest.raises(ValueError, match=match):
        decompose(torch.zeros(1, 1, *shape), factors, mode)


def test_bad_factor_and_rank_raise():
    with pytest.raises(ValueError, match="factors\\[0\\]"):
        decompose(torch.zeros(1, 1, 2, 8, 8), [(3, 2, 2)])
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        decompose(torch.zeros(1, 8, 8), [(1, 2, 2)])
    with pytest.raises(ValueError, match="levels"):
        recompose([torch.zeros(1, 1, 1, 4, 4)], [(1, 2, 2)])
