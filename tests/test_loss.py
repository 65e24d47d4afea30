"""Noisy levels, velocity targets and the DFM loss against hand-computed references."""

import pytest
import torch

from dfm_video.dfm import decompose, dfm_loss, noisy_levels, sample_noise


def test_noisy_levels_follow_the_paper_convention():
    x = [torch.randn(3, 2, 1, 4, 4, dtype=torch.float64), torch.randn(3, 2, 1, 8, 8, dtype=torch.float64)]
    eps = sample_noise(x, torch.Generator().manual_seed(0))
    assert [e.shape for e in eps] == [v.shape for v in x]
    t = torch.tensor([[0.0, 0.0], [1.0, 0.3], [0.25, 1.0]], dtype=torch.float64)
    nl = noisy_levels(x, t, eps)
    for s in range(2):
        for b in range(3):
            ref = t[b, s] * x[s][b] + (1 - t[b, s]) * eps[s][b]
            assert torch.allclose(nl.x_t[s][b], ref)
        assert torch.allclose(nl.target[s], x[s] - eps[s])
    # t = 0 is pure noise, t = 1 is data
    assert torch.allclose(nl.x_t[0][0], eps[0][0]) and torch.allclose(nl.x_t[0][1], x[0][1])


def test_loss_sums_active_stage_means_and_averages_batch():
    g = torch.Generator().manual_seed(1)
    pred = [
        torch.randn(4, 2, 1, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 2, 3, 4, 4, generator=g, dtype=torch.float64),
    ]
    target = [torch.randn_like(p) for p in pred]
    active = torch.tensor([[True, False], [True, True], [True, True], [True, False]])
    out = dfm_loss(pred, target, active)
    ref = 0.0
    for b in range(4):
        for s in range(2):
            if active[b, s]:
                ref += ((pred[s][b] - target[s][b]) ** 2).mean()
    assert torch.allclose(out.loss, ref / 4)
    assert torch.equal(out.active_count, torch.tensor([4.0, 2.0], dtype=torch.float64))
    stage2 = torch.stack([((pred[1][b] - target[1][b]) ** 2).mean() for b in (1, 2)]).mean()
    assert torch.allclose(out.per_stage[1], stage2)


def test_inactive_stage_gets_no_gradient():
    pred = [torch.randn(2, 1, 1, 2, 2, requires_grad=True), torch.randn(2, 1, 1, 4, 4, requires_grad=True)]
    target = [torch.zeros(2, 1, 1, 2, 2), torch.zeros(2, 1, 1, 4, 4)]
    out = dfm_loss(pred, target, torch.tensor([[True, False], [True, False]]))
    out.loss.backward()
    assert pred[1].grad.abs().max() == 0 and pred[0].grad.abs().max() > 0


def test_single_stage_equals_plain_flow_matching_mse():
    x = torch.randn(5, 3, 4, 6, 6, dtype=torch.float64)
    levels = decompose(x, [])
    eps = sample_noise(levels, torch.Generator().manual_seed(3))
    t = torch.rand(5, 1, dtype=torch.float64)
    pred = [torch.randn_like(x)]
    nl = noisy_levels(levels, t, eps)
    out = dfm_loss(pred, nl.target, torch.ones(5, 1, dtype=torch.bool))
    fm = ((pred[0] - (x - eps[0])) ** 2).mean()
    assert torch.allclose(out.loss, fm)
    assert torch.allclose(nl.x_t[0], t.view(5, 1, 1, 1, 1) * x + (1 - t.view(5, 1, 1, 1, 1)) * eps[0])


def test_bf16_predictions_are_reduced_in_float32_and_shape_errors():
    pred = [torch.randn(2, 1, 1, 2, 2).bfloat16()]
    out = dfm_loss(pred, [torch.zeros(2, 1, 1, 2, 2)], torch.ones(2, 1, dtype=torch.bool))
    assert out.loss.dtype == torch.float32
    with pytest.raises(ValueError, match="stage 1"):
        dfm_loss([torch.zeros(2, 1, 1, 2, 2)], [torch.zeros(2, 1, 1, 4, 4)], torch.ones(2, 1, dtype=torch.bool))
