"""The one training-data path reproduces the sample order and resume fingerprint of runs started with the
two-path reader it replaced (recorded in tests/fixtures/data_order_reference.json from commit 814331b by
tests/fixtures/make_data_order_reference.py): a run resumes on the same samples, and its resume guard
accepts the data."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from dfm_video.config import load_config
from dfm_video.data.mixture import open_data
from dfm_video.data.sampler import ResumableSampler
from dfm_video.train.config_changes import data_fingerprint

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "data_order_reference.json").read_text())


@pytest.mark.parametrize(
    "record", REFERENCE["single"], ids=lambda r: "n{}-G{}-M{}-W{}-seed{}-shuffle{}-start{}".format(*r["case"])
)
def test_one_dataset_is_one_bucket_with_the_recorded_order(record) -> None:
    n, G, M, W, seed, shuffle, start = record["case"]
    for r, expected in enumerate(record["ranks"]):
        sampler = ResumableSampler(
            [n], [1], global_batch=G, micro_batch=M, rank=r, world_size=W, seed=seed, shuffle=shuffle, start=start
        )
        flat = itertools.chain.from_iterable(sampler)
        assert list(itertools.islice(flat, len(expected))) == expected, f"rank {r}"


@pytest.mark.parametrize(
    "record", REFERENCE["mix"], ids=lambda r: "sizes{}-shares{}-M{}-W{}-start{}".format(*r["case"][:4], r["case"][6])
)
def test_a_mix_keeps_the_recorded_order(record) -> None:
    sizes, shares, M, W, seed, shuffle, start = record["case"]
    for r, expected in enumerate(record["ranks"]):
        sampler = ResumableSampler(
            sizes,
            shares,
            global_batch=M * W,
            micro_batch=M,
            rank=r,
            world_size=W,
            seed=seed,
            shuffle=shuffle,
            start=start,
        )
        assert list(itertools.islice(sampler, len(expected))) == expected, f"rank {r}"


def test_one_dataset_keeps_its_resume_fingerprint_and_batches(tiny_shards) -> None:
    ref = REFERENCE["tiny_shards"]
    # dfm.standardize null: the run's config must come back resolved, as the resume guard compares it
    over = [f"data.shards={tiny_shards}", "data.num_workers=0", "dfm.standardize=null", *ref["overrides"]]
    cfg = load_config("tiny.yaml", over)
    data = open_data(cfg)
    meta = json.loads(json.dumps({k: v for k, v in data.dataset_meta().items() if k != "source"}))
    assert len(data.dataset) == ref["num_samples"]
    # The session's shards are rebuilt by Ray, which merges the shards' statistics in its own order: they
    # agree with the recorded ones to rounding. With the recorded statistics the fingerprint is bit-exact.
    stats, want_stats = meta.pop("stats"), ref["meta"]["stats"]
    assert meta == {k: v for k, v in ref["meta"].items() if k != "stats"}
    assert stats.keys() == want_stats.keys()
    for key in stats:
        assert torch.allclose(
            torch.tensor(stats[key], dtype=torch.float64),
            torch.tensor(want_stats[key], dtype=torch.float64),
            rtol=1e-12,
            atol=0,
        )
    assert data_fingerprint({**meta, "stats": want_stats}, len(data.dataset)) == ref["fingerprint"]
    assert cfg.dfm.standardize is True  # resolved on the run's own config
    # the DataLoader's micro-batches are the sampler's, in order, with their labels
    G, M = cfg.distributed.global_batch_size, cfg.distributed.micro_batch_size
    sampler = ResumableSampler(
        [len(data.dataset)], [1], global_batch=G, micro_batch=M, rank=0, world_size=1, seed=cfg.train.seed
    )
    cpu = torch.device("cpu")
    for (levels, labels), idx in zip(
        data.batches(rank=0, world_size=1, start=0, device=cpu), itertools.islice(sampler, 4)
    ):
        items = [data.dataset[i] for i in idx]
        stacked = [torch.stack([it[0][s] for it in items]) for s in range(len(levels))]
        want_levels, want_labels = data.buckets[0].prepare(stacked, torch.tensor([it[1] for it in items]), cpu)
        assert torch.equal(labels, want_labels) and all(torch.equal(a, b) for a, b in zip(levels, want_levels))
        assert levels[-1].shape[0] == M
