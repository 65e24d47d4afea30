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
from dfm_video.data.sampler import ResumableSampler, integer_shares
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


def _take_samples(sampler: ResumableSampler, world: int, samples: int) -> dict[int, list[int]]:
    """The global order of a run's micro-batches (slot by slot over all ranks), grouped by bucket."""
    by_bucket: dict[int, list[int]] = {}
    slot = sampler.start_slot
    for _ in range(samples // sampler.M):
        d, idx = sampler.micro_batch(slot)
        by_bucket.setdefault(d, []).extend(idx)
        slot += 1
    return by_bucket


def test_a_mix_resumed_with_another_micro_batch_continues_every_bucket_exactly() -> None:
    # 96 samples at micro batch 3 on 2 ranks (global 6, weights 0.7 / 0.3), resumed on 3 ranks at micro
    # batch 2: each bucket continues where it stopped, no clip skipped or repeated, epochs unchanged.
    sizes, shares = [50, 23], integer_shares([0.7, 0.3])
    common = dict(global_batch=6, seed=5, shuffle=True)
    first = ResumableSampler(sizes, shares, micro_batch=3, rank=0, world_size=2, **common)
    uninterrupted = _take_samples(first, 2, 96 + 240)
    done = _take_samples(first, 2, 96)
    stored = first.position(96)
    assert stored["positions"] == [len(done[0]), len(done[1])] == [66, 30]
    resumed = ResumableSampler(sizes, shares, micro_batch=2, rank=0, world_size=3, start=96, **stored, **common)
    after = _take_samples(resumed, 3, 240)
    for d in (0, 1):  # the resumed stream of each bucket is the uninterrupted one, from the stored position on
        assert done[d] + after[d] == uninterrupted[d][: len(done[d]) + len(after[d])], d
    assert abs(len(after[0]) / 240 - 0.7) < 0.05
    # the ranks of the resumed run split its micro-batches between them, slot by slot
    ranks = [
        ResumableSampler(sizes, shares, micro_batch=2, rank=r, world_size=3, start=96, **stored, **common)
        for r in range(3)
    ]
    streams = [iter(s) for s in ranks]
    for slot in range(resumed.start_slot, resumed.start_slot + 30):
        assert next(streams[slot % 3]) == resumed.micro_batch(slot)[1]


def test_a_checkpoint_holding_only_its_micro_batch_resumes_exactly(tiny_shards) -> None:
    # checkpoints written before the data position was stored: the schedule is replayed at their micro batch
    cfg = load_config("tiny.yaml", [f"data.shards={tiny_shards}", "data.num_workers=0"])
    data = open_data(cfg)
    G, M = cfg.distributed.global_batch_size, cfg.distributed.micro_batch_size
    plain = ResumableSampler([len(data.dataset)], [1], global_batch=G, micro_batch=M, rank=0, world_size=1, seed=0)
    replayed = data.sampler(rank=0, world_size=1, start=2 * G, resume={"micro_batch": M})
    fresh = data.sampler(rank=0, world_size=1, start=2 * G)
    want = [plain.micro_batch(s)[1] for s in range(2 * G // M, 2 * G // M + 5)]
    assert list(itertools.islice(replayed, 5)) == want == list(itertools.islice(fresh, 5))
