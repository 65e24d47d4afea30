"""Training batch preparation by value (`Bucket.prepare`, what `TrainingData.batches` yields): the
dataset statistics' standardisation, exact re-decomposition of a pyramid stored with other factors,
and unlabelled clips (label id -1) mapped to the null class."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dfm_video.config import load_config
from dfm_video.data.loader import Bucket
from dfm_video.dfm import LevelStats, decompose, recompose


def _bucket(cfg, stored_factors, stats=None, redecompose=False, label_map=None) -> Bucket:
    info = SimpleNamespace(factors=stored_factors, temporal_mode="causal", labels=["a", "b", "c"])
    return Bucket(
        name="b",
        cfg=cfg,
        info=info,
        dataset=None,
        latent_shape=(5, 8, 8),
        channels=2,
        stats=stats,
        redecompose=redecompose,
        dropped=0,
        label_map=label_map,
    )


def test_levels_are_standardised_with_the_dataset_statistics_per_level_and_channel():
    cfg = load_config(None, ["dfm.factors=[[2,2,2]]", "model.num_classes=3"])
    x = torch.randn(3, 2, 5, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stored = decompose(x, cfg.dfm.factors, "causal")
    mean = torch.tensor([[0.5, -1.0], [0.0, 0.25]], dtype=torch.float64)
    std = torch.tensor([[2.0, 0.5], [4.0, 0.1]], dtype=torch.float64)
    levels, labels = _bucket(cfg, cfg.dfm.factors, LevelStats(mean, std)).prepare(
        stored, torch.tensor([0, 2, 1]), torch.device("cpu")
    )
    for s in range(2):
        for c in range(2):
            want = (stored[s][:, c] - mean[s, c]) / std[s, c]
            torch.testing.assert_close(levels[s][:, c].double(), want, rtol=1e-6, atol=1e-6)
    assert labels.tolist() == [0, 2, 1]


def test_a_pyramid_stored_with_other_factors_is_re_decomposed_exactly():
    cfg = load_config(
        None,
        [
            "dfm.factors=[[1,2,2],[2,2,2]]",
            "dfm.stage_probs=[0.4,0.3,0.3]",
            "sample.steps=[4,4,4]",
            "model.num_classes=3",
        ],
    )
    x = torch.randn(2, 2, 5, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stored_factors = [[2, 2, 2]]
    stored = decompose(x, stored_factors, "causal")
    levels, _ = _bucket(cfg, stored_factors, redecompose=True).prepare(
        stored, torch.tensor([0, 1]), torch.device("cpu")
    )
    want = decompose(x, cfg.dfm.factors, "causal")
    assert [tuple(v.shape) for v in levels] == [tuple(v.shape) for v in want]
    for got, w in zip(levels, want):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-12)
    torch.testing.assert_close(recompose(levels, cfg.dfm.factors, "causal"), x, rtol=0, atol=1e-12)


def test_unlabelled_clips_train_the_null_class_and_mixed_labels_are_mapped():
    cfg = load_config(None, ["dfm.factors=[[2,2,2]]", "model.num_classes=7"])
    x = torch.zeros(4, 2, 5, 8, 8)
    stored = decompose(x, cfg.dfm.factors, "causal")
    _, labels = _bucket(cfg, cfg.dfm.factors).prepare(stored, torch.tensor([2, -1, 0, -1]), torch.device("cpu"))
    assert labels.tolist() == [2, 7, 0, 7]  # 7 = model.num_classes, the null class
    # a mix maps this dataset's ids onto the run's label union; -1 still becomes the null class
    mapped = _bucket(cfg, cfg.dfm.factors, label_map=torch.tensor([4, 5, 6]))
    _, labels = mapped.prepare(stored, torch.tensor([2, -1, 0, 1]), torch.device("cpu"))
    assert labels.tolist() == [6, 7, 4, 5]
