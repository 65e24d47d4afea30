"""Trainer building blocks without a launcher: DeepSpeed JSON, LR shape, resumable sampler, objective."""

import itertools
import math

import pytest
import torch

from dfm_video import faults
from dfm_video.config import load_config
from dfm_video.data.sampler import ResumableSampler
from dfm_video.dfm import TimestepParams, decompose, dfm_objective, drop_labels
from dfm_video.train.ds_config import build_deepspeed_config, gradient_accumulation_steps
from dfm_video.train.ema import EMA
from dfm_video.train.lr_schedule import lr_multiplier
from dfm_video.train.step import InjectedFaults


def test_deepspeed_json_is_derived_from_the_config():
    cfg = load_config(
        None,
        [
            "distributed.global_batch_size=256",
            "distributed.micro_batch_size=2",
            "distributed.zero_stage=3",
            "optim.grad_clip=0.5",
        ],
    )
    ds = build_deepspeed_config(cfg, world_size=16)
    assert ds["train_batch_size"] == 256 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 8
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 0.5
    assert "offload_optimizer" not in ds["zero_optimization"]
    off = build_deepspeed_config(load_config(None, ["distributed.offload_optimizer=true"]), world_size=1)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    fp32 = build_deepspeed_config(
        load_config(None, ["distributed.precision=fp32", "distributed.zero_stage=1"]), world_size=1
    )
    assert not fp32["bf16"]["enabled"] and fp32["zero_optimization"]["stage"] == 1


def test_batch_sizes_that_do_not_divide_are_refused():
    cfg = load_config(None, ["distributed.global_batch_size=10", "distributed.micro_batch_size=4"])
    with pytest.raises(ValueError, match="global_batch_size=10 must be a multiple"):
        gradient_accumulation_steps(cfg, world_size=1)
    for precision in ("bf16", "fp32"):  # ZeRO-0: bf16 fails in DeepSpeed's initialize, fp32 applies NaN steps
        with pytest.raises(ValueError, match="distributed.zero_stage': expected 1, 2 or 3, got 0"):
            load_config(None, ["distributed.zero_stage=0", f"distributed.precision={precision}"])


def test_lr_warmup_then_constant_or_cosine():
    cfg = load_config(None, ["optim.warmup_steps=10"])
    f = lr_multiplier(cfg.optim, 100)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(50) == 1.0 and f(99) == 1.0
    cos = lr_multiplier(
        load_config(None, ["optim.warmup_steps=10", "optim.schedule=cosine", "optim.min_lr_ratio=0.1"]).optim, 110
    )
    assert (
        cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.1 + 0.9 * 0.5) and cos(110) == pytest.approx(0.1)
    )


def _stream(world, micro, G, start, n_items, n=23, seed=3):
    return [
        list(
            itertools.islice(
                itertools.chain.from_iterable(
                    ResumableSampler(
                        [n], [1], global_batch=G, micro_batch=micro, rank=r, world_size=world, seed=seed, start=start
                    )
                ),
                n_items,
            )
        )
        for r in range(world)
    ]


def test_sampler_covers_each_epoch_once_across_ranks_and_resumes_exactly():
    world, micro, G = 2, 2, 8  # accumulation 2
    n = 23
    per_epoch = (n // G) * G
    streams = _stream(world, micro, G, 0, per_epoch // world * 2, n)
    # interleave in consumption order: micro-step a -> rank 0's M, rank 1's M, ...
    consumed = []
    for a in range(len(streams[0]) // micro):
        for r in range(world):
            consumed += streams[r][a * micro : (a + 1) * micro]
    epoch0, epoch1 = consumed[:per_epoch], consumed[per_epoch:]
    assert len(set(epoch0)) == per_epoch and len(set(epoch1)) == per_epoch
    assert epoch0 != epoch1  # reshuffled per epoch
    # resume after 3 micro-steps (= 3 * world * micro samples) continues the same stream
    start = 3 * world * micro
    resumed = _stream(world, micro, G, start, 10, n)
    for r in range(world):
        assert resumed[r] == streams[r][3 * micro : 3 * micro + 10]


def test_sampler_refuses_a_dataset_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableSampler([3], [1], global_batch=4, micro_batch=1, rank=0, world_size=1, seed=0)


def test_label_dropout_rate_and_null_class():
    y = torch.zeros(100_000, dtype=torch.long)
    out = drop_labels(y, 0.1, 700, torch.Generator().manual_seed(0))
    frac = (out == 700).double().mean().item()
    assert abs(frac - 0.1) < 5 * math.sqrt(0.09 / 1e5)
    assert set(out.unique().tolist()) == {0, 700}
    assert torch.equal(drop_labels(y, 0.0, 700), y)


def test_objective_is_zero_for_the_oracle_velocity_and_reproducible():
    x = torch.randn(4, 3, 5, 8, 8, dtype=torch.float64)
    levels = decompose(x, [(1, 2, 2)])
    params = TimestepParams((0.5, 0.5))
    captured = {}

    def oracle(x_t, t, active, y):
        # with t and x_t known the velocity x1 - x0 = (x1 - x_t) / (1 - t) is exact
        captured["y"] = y
        return [(lv - xt) / (1 - t[:, s].double().view(-1, 1, 1, 1, 1)) for s, (lv, xt) in enumerate(zip(levels, x_t))]

    out = dfm_objective(
        oracle,
        levels,
        torch.arange(4),
        params,
        class_dropout=0.0,
        null_class=9,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.loss.abs().item() < 1e-18
    a = dfm_objective(
        lambda *a: [torch.zeros_like(v) for v in levels],
        levels,
        torch.arange(4),
        params,
        class_dropout=0.5,
        null_class=9,
        generator=torch.Generator().manual_seed(1),
    )
    b = dfm_objective(
        lambda *a: [torch.zeros_like(v) for v in levels],
        levels,
        torch.arange(4),
        params,
        class_dropout=0.5,
        null_class=9,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(a.loss, b.loss) and a.loss > 0
    with pytest.raises(ValueError, match="2 stages"):
        dfm_objective(oracle, levels[:1], torch.arange(4), params, class_dropout=0.0, null_class=9)


def test_per_sample_generators_make_draws_independent_of_micro_batch_grouping():
    # What a resume on another world size relies on: the same global sample positions give the same
    # stage, t, noise and label dropout whether they come as one micro-batch of 4 or two of 2.
    from dfm_video.dfm.objective import sample_generators

    cfg = load_config(None, ["dfm.stage_probs=[0.5,0.5]"])
    params = TimestepParams.from_config(cfg.dfm)
    levels = [torch.randn(4, 3, 1, 4, 4), torch.randn(4, 3, 1, 8, 8)]
    y = torch.arange(4)
    seen = []

    def model(x, t, active, y_in):
        seen.append((torch.cat([v.flatten(1) for v in x], 1), t, active, y_in))
        return [v * 0 for v in x]

    dfm_objective(
        model,
        levels,
        y,
        params,
        class_dropout=0.5,
        null_class=9,
        generator=sample_generators(7, 100, 4, torch.device("cpu")),
    )
    for start in (0, 2):
        part = [v[start : start + 2] for v in levels]
        dfm_objective(
            model,
            part,
            y[start : start + 2],
            params,
            class_dropout=0.5,
            null_class=9,
            generator=sample_generators(7, 100 + start, 2, torch.device("cpu")),
        )
    whole, halves = seen[0], [torch.cat(z) for z in zip(*seen[1:])]
    for a, b in zip(whole, halves):
        assert torch.equal(a, b)
    assert not torch.equal(whole[1][0], whole[1][1])  # each sample has its own draws


def test_injected_faults_come_from_dfm_faults(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    none = InjectedFaults()
    assert none.loss_steps == set() and none.grad_steps == set()
    for k, v in faults.env(train__nan_loss={"at_step": 3, "times": 2}, train__inf_grad={"at_step": 6}).items():
        monkeypatch.setenv(k, v)
    f = InjectedFaults()
    assert f.loss_steps == {3, 4} and f.grad_steps == {6}
    one = torch.ones(())
    assert torch.isnan(f.loss(3, one)) and torch.isnan(f.loss(4, one)) and f.loss(5, one) == 1
    for step, expect_inf in ((5, False), (6, True)):
        x = torch.ones(2, requires_grad=True)
        (f.outputs(step, [x * 1.0])[0].sum()).backward()
        assert bool(torch.isinf(x.grad).all()) == expect_inf, step


def test_ema_update_follows_the_formula_step_by_step():
    """shadow <- d * shadow + (1 - d) * w after each update (checked by value, not against another EMA)."""
    d = 0.9
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    ema = EMA(model, d)
    expected_w, expected_b = torch.ones(2, 3), torch.full((2,), -2.0)
    for step, (w, b) in enumerate([(3.0, 0.0), (-1.0, 5.0), (10.0, 10.0)]):
        with torch.no_grad():
            model.weight.fill_(w)
            model.bias.fill_(b)
        ema.update()
        expected_w = d * expected_w + (1 - d) * w
        expected_b = d * expected_b + (1 - d) * b
        got = ema.full_state_dict()
        torch.testing.assert_close(got["weight"], expected_w, rtol=0, atol=1e-6, msg=f"step {step}")
        torch.testing.assert_close(got["bias"], expected_b, rtol=0, atol=1e-6, msg=f"step {step}")
        if step == 0:  # by hand: 0.9 * 1 + 0.1 * 3 and 0.9 * -2 + 0.1 * 0
            assert abs(got["weight"][0, 0].item() - 1.2) < 1e-6 and abs(got["bias"][0].item() + 1.8) < 1e-6
