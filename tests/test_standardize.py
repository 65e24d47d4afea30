"""Per-level standardisation and the mergeable statistics accumulator, against float64 references."""

import pytest
import torch

from dfm_video.dfm import LevelMoments, LevelStats, decompose, destandardize, standardize


def _levels(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 5, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(
        1, 4, 1, 1, 1
    )
    return decompose(x + 0.7, [(2, 2, 2)])


def test_moments_match_torch_reference_and_merge_exactly():
    batches = [_levels(i, n) for i, n in enumerate([1, 3, 2])]
    a = LevelMoments(2, 4)
    b = LevelMoments(2, 4)
    a.update(batches[0])
    b.update(batches[1])
    b.update(batches[2])
    merged = a.merge(b).stats()
    for s in range(2):
        allv = torch.cat([bt[s] for bt in batches]).transpose(0, 1).reshape(4, -1)
        assert torch.allclose(merged.mean[s], allv.mean(1), atol=1e-12)
        assert torch.allclose(merged.std[s], allv.std(1, unbiased=False), atol=1e-12)


def test_standardize_gives_unit_std_and_inverts():
    levels = _levels(5, 4)
    acc = LevelMoments(2, 4)
    acc.update(levels)
    stats = acc.stats()
    z = standardize(levels, stats)
    for s in range(2):
        flat = z[s].transpose(0, 1).reshape(4, -1)
        assert torch.allclose(flat.mean(1), torch.zeros(4, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(flat.std(1, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-10)
    back = destandardize(z, stats)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(back, levels))


def test_stats_serialise_and_keep_level_dtype():
    acc = LevelMoments(2, 4)
    acc.update(_levels(1))
    again = LevelMoments.from_dict(acc.to_dict())
    assert torch.equal(again.mean, acc.mean) and torch.equal(again.m2, acc.m2)
    stats = LevelStats.from_dict(acc.stats().to_dict())
    z = standardize([lv.float() for lv in _levels(2)], stats)
    assert z[0].dtype == torch.float32


def test_mismatches_raise():
    stats = LevelStats.identity(2, 4)
    with pytest.raises(ValueError, match="levels"):
        standardize(_levels(0)[:1], stats)
    with pytest.raises(ValueError, match="channels"):
        standardize([torch.zeros(1, 3, 1, 2, 2)] * 2, stats)
    with pytest.raises(ValueError, match="std"):
        LevelStats(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no samples"):
        LevelMoments(2, 4).stats()
