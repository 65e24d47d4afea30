"""Stage and timestep sampling: frequencies and logit-normal moments within statistical bounds."""

import math

import pytest
import torch

from dfm_video.dfm import TimestepParams, sample_timesteps

N = 200_000


def _logit(t):
    return torch.log(t) - torch.log1p(-t)


def test_stage_frequencies_and_masks():
    params = TimestepParams(stage_probs=(0.6, 0.3, 0.1))
    ts = sample_timesteps(N, params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ts.t.shape == (N, 3) and ts.active.shape == (N, 3) and ts.stage.shape == (N,)
    for q, p in enumerate(params.stage_probs):
        freq = (ts.stage == q).double().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / N)
    idx = torch.arange(3)[None]
    assert torch.equal(ts.active, idx <= ts.stage[:, None])
    later = idx > ts.stage[:, None]
    assert bool((ts.t[later] == 0).all())
    assert bool((ts.t[~later] > 0).all()) and bool((ts.t[~later] < 1).all())


@pytest.mark.parametrize("cur_loc,cur_scale,early_loc,early_scale", [(0.0, 1.0, 1.5, 1.0), (-0.5, 0.7, 2.0, 0.5)])
def test_logit_normal_moments(cur_loc, cur_scale, early_loc, early_scale):
    params = TimestepParams((0.5, 0.5), cur_loc, cur_scale, early_loc, early_scale)
    ts = sample_timesteps(N, params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cur = _logit(ts.t[torch.arange(N), ts.stage])
    early = _logit(ts.t[ts.stage == 1, 0])
    for z, loc, scale in ((cur, cur_loc, cur_scale), (early, early_loc, early_scale)):
        n = z.numel()
        assert abs(z.mean().item() - loc) < 5 * scale / math.sqrt(n)
        assert abs(z.std().item() - scale) < 5 * scale / math.sqrt(2 * n)


def test_earlier_stages_are_drawn_independently():
    params = TimestepParams((0.0, 0.0, 1.0))
    ts = sample_timesteps(50_000, params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, b = _logit(ts.t[:, 0]), _logit(ts.t[:, 1])
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.03
    assert not torch.equal(ts.t[:, 0], ts.t[:, 1])


def test_single_stage_is_plain_flow_matching_and_per_batch_mode():
    ts = sample_timesteps(1000, TimestepParams((1.0,)), generator=torch.Generator().manual_seed(3))
    assert bool(ts.active.all()) and bool((ts.stage == 0).all())
    pb = sample_timesteps(
        64, TimestepParams((0.5, 0.5), stage_sampling="per_batch"), generator=torch.Generator().manual_seed(4)
    )
    assert pb.stage.unique().numel() == 1


def test_per_batch_stage_frequencies_follow_stage_probs():
    """Per-batch mode draws one stage per batch, with the stage_probs frequencies across batches."""
    params = TimestepParams((0.6, 0.3, 0.1), stage_sampling="per_batch")
    gen = torch.Generator().manual_seed(5)
    n = 4000
    stages = []
    for _ in range(n):
        ts = sample_timesteps(8, params, generator=gen)
        assert ts.stage.unique().numel() == 1
        assert torch.equal(ts.active, torch.arange(3)[None] <= ts.stage[:, None])
        stages.append(int(ts.stage[0]))
    stages = torch.tensor(stages)
    for q, p in enumerate(params.stage_probs):
        freq = (stages == q).double().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (q, freq, p)


def test_seeded_and_validated():
    p = TimestepParams()
    a = sample_timesteps(16, p, generator=torch.Generator().manual_seed(7))
    b = sample_timesteps(16, p, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.t, b.t) and torch.equal(a.stage, b.stage)
    with pytest.raises(ValueError, match="sum to 1"):
        sample_timesteps(4, TimestepParams((0.5, 0.6)))
