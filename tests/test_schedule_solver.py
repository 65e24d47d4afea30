"""Sampling schedule and the stage-wise Euler solver with guidance, against analytic answers."""

import pytest
import torch

from dfm_video.dfm import count_nfe, euler_sample, phase_ends, sampling_schedule, schedule_activity


def test_single_stage_is_the_linear_flow_matching_grid():
    s = sampling_schedule([40])
    assert s.shape == (41, 1)
    assert torch.allclose(s[:, 0], torch.linspace(0, 1, 41, dtype=torch.float64))


@pytest.mark.parametrize("steps,tau", [((30, 10), 0.9), ((3, 5), 0.7), ((1, 1), 0.95), ((4, 2), 1.0)])
def test_two_stage_schedule_matches_the_paper(steps, tau):
    n1, n2 = steps
    s = sampling_schedule(steps, tau)
    assert s.shape == (n1 + n2 + 1, 2)
    assert torch.allclose(s[: n1 + 1, 0], torch.linspace(0, tau, n1 + 1, dtype=torch.float64))
    assert bool((s[: n1 + 1, 1] == 0).all())
    t2 = s[n1:, 1]
    assert torch.allclose(t2, torch.linspace(0, 1, n2 + 1, dtype=torch.float64))
    assert torch.allclose(s[n1:, 0], tau + (1 - tau) * t2)
    assert bool((s[-1] == 1).all())


@pytest.mark.parametrize("steps,tau", [((5, 3, 2), 0.8), ((2, 7, 1, 4), (0.5, 0.9, 0.3)), ((1, 1, 1), 1.0)])
def test_many_stage_schedule_is_monotone_and_ends_at_one(steps, tau):
    s = sampling_schedule(steps, tau)
    assert s.shape == (sum(steps) + 1, len(steps))
    assert bool((s[1:] >= s[:-1]).all())
    assert bool((s[-1] == 1).all()) and bool((s[0] == 0).all())
    ends = phase_ends(steps)
    taus = [tau] * (len(steps) - 1) if isinstance(tau, float) else list(tau)
    for k, end in enumerate(ends[:-1]):
        assert s[end, k].item() == pytest.approx(taus[k])
        assert bool((s[: end + 1, k + 1] == 0).all())  # stage k+1 waits until stage k reached tau


def test_schedule_errors():
    for steps, tau in (([], 0.9), ([0, 3], 0.9), ([3, 3], 0.0), ([3, 3], 1.5), ([3, 3, 3], (0.5,))):
        with pytest.raises(ValueError):
            sampling_schedule(steps, tau)


def test_activity_starts_with_each_phase():
    act = schedule_activity(sampling_schedule([3, 2, 2], 0.5))
    assert act[:, 0].all()
    assert act[:, 1].tolist() == [False] * 3 + [True] * 4
    assert act[:, 2].tolist() == [False] * 5 + [True] * 2


def _noise(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(B, 2, 1, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(B, 2, 3, 4, 4, generator=g, dtype=torch.float64),
    ]


def test_constant_velocity_is_integrated_exactly_per_stage():
    noise = _noise()
    c = [torch.full_like(noise[0], 0.5), torch.full_like(noise[1], -2.0)]
    out = euler_sample(lambda x, t, a, y: c, noise, sampling_schedule([7, 3], 0.8), torch.zeros(2, dtype=torch.long))
    for s in range(2):
        assert torch.allclose(out[s], noise[s] + c[s], atol=1e-12)


@pytest.mark.parametrize("steps,tau", [((30, 10), 0.9), ((4, 3, 2), 0.6)])
def test_oracle_velocity_lands_on_the_data_for_any_schedule(steps, tau):
    # For a point mass at X the exact velocity is (X - x) / (1 - t); Euler follows the straight path exactly.
    S = len(steps)
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(2, 3, 1, 2 ** (s + 1), 2 ** (s + 1), generator=g, dtype=torch.float64) for s in range(S)]
    noise = [torch.randn_like(d) for d in data]

    def oracle(x, t, active, y):
        return [
            (d - xs) / (1 - t[:, s].view(-1, 1, 1, 1, 1).double()).clamp_min(1e-12)
            for s, (d, xs) in enumerate(zip(data, x))
        ]

    out = euler_sample(oracle, noise, sampling_schedule(steps, tau), torch.zeros(2, dtype=torch.long))
    for s in range(S):
        assert torch.allclose(out[s], data[s], atol=1e-9)


def test_model_sees_masks_and_zero_time_for_waiting_stages_and_one_call_per_step():
    noise = _noise()
    sched = sampling_schedule([3, 2], 0.9)
    calls = []

    def fn(x, t, active, y):
        calls.append((t.clone(), active.clone(), [v.clone() for v in x]))
        return [torch.ones_like(v) for v in x]

    euler_sample(fn, noise, sched, torch.zeros(2, dtype=torch.long))
    assert len(calls) == 5
    for i, (t, active, x) in enumerate(calls):
        assert t.shape == (2, 2) and active.shape == (2, 2)
        assert torch.allclose(t[0].double(), sched[i], atol=1e-6)
        if i < 3:
            assert active[:, 1].logical_not().all() and (t[:, 1] == 0).all()
            assert torch.equal(x[1], noise[1])  # waiting stage keeps its fresh noise
        else:
            assert active.all()


def test_classifier_free_guidance_batches_cond_and_uncond_and_respects_interval():
    B, null = 2, 10
    noise = _noise(B)
    sched = sampling_schedule([4, 4], 0.5)
    batch_sizes = []

    def fn(x, t, active, y):
        batch_sizes.append(x[0].shape[0])
        # conditional velocity 1, unconditional velocity 0 per stage
        return [(y != null).double().view(-1, 1, 1, 1, 1).expand_as(v).clone() for v in x]

    scale = 3.0
    out = euler_sample(fn, noise, sched, torch.tensor([1, 2]), cfg_scale=scale, null_label=null)
    assert set(batch_sizes) == {2 * B}
    for s in range(2):
        assert torch.allclose(out[s], noise[s] + scale, atol=1e-12)

    batch_sizes.clear()
    interval = (0.2, 0.6)
    out = euler_sample(fn, noise, sched, torch.tensor([1, 2]), cfg_scale=scale, cfg_interval=interval, null_label=null)
    for s in range(2):
        expected = 0.0
        for i in range(sched.shape[0] - 1):
            dt = (sched[i + 1, s] - sched[i, s]).item()
            inside = interval[0] <= sched[i, s].item() <= interval[1]
            expected += dt * (scale if inside else 1.0)
        assert torch.allclose(out[s], noise[s] + expected, atol=1e-12)
    assert B in batch_sizes and 2 * B in batch_sizes  # unguided steps skip the unconditional half
    # the reported NFE is what the solver really spent: 1 per call, 2 per guided (doubled) call
    assert count_nfe(sched, scale, interval) == sum(n // B for n in batch_sizes) < 2 * (sched.shape[0] - 1)
    assert count_nfe(sched, scale) == 16 and count_nfe(sched, 1.0, interval) == 8
    with pytest.raises(ValueError, match="null label"):
        euler_sample(fn, noise, sched, torch.tensor([1, 2]), cfg_scale=2.0)


def test_stage_callback_fires_when_each_stage_reaches_tau():
    noise = _noise()
    seen = []
    euler_sample(
        lambda x, t, a, y: [torch.ones_like(v) for v in x],
        noise,
        sampling_schedule([3, 2], 0.6),
        torch.zeros(2, dtype=torch.long),
        on_stage_done=lambda k, levels, step: seen.append((k, step, levels[0].clone())),
    )
    assert [(k, step) for k, step, _ in seen] == [(0, 3), (1, 5)]
    assert torch.allclose(seen[0][2], noise[0] + 0.6, atol=1e-12)
    assert torch.allclose(seen[1][2], noise[0] + 1.0, atol=1e-12)


def test_clean_estimate_callback_gives_x_plus_remaining_time_times_velocity():
    noise = _noise()
    seen = []
    # velocity depends on the state: v = 2 - x (so the estimate is not just noise + constant)
    euler_sample(
        lambda x, t, a, y: [2.0 - v for v in x],
        noise,
        sampling_schedule([3, 2], 0.6),
        torch.zeros(2, dtype=torch.long),
        on_stage_done=lambda k, levels, step: seen.append(("raw", k, step, [v.clone() for v in levels])),
        on_stage_clean=lambda k, levels, step: seen.append(("clean", k, step, levels)),
    )
    raw = [e for e in seen if e[0] == "raw"]
    clean = [e for e in seen if e[0] == "clean"]
    assert [(k, step) for _, k, step, _ in clean] == [(0, 3), (1, 5)]
    x_tau = raw[0][3][0]  # stage 1 exactly at t = tau = 0.6
    assert len(clean[0][3]) == 1
    assert torch.allclose(clean[0][3][0], x_tau + 0.4 * (2.0 - x_tau), atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(clean[1][3], raw[1][3]))  # at t = 1 the estimate is x


def test_reproducible_and_shape_checked():
    fn = lambda x, t, a, y: [v * 0.1 + t[:, :1].view(-1, 1, 1, 1, 1) for v in x]  # noqa: E731
    a = euler_sample(fn, _noise(seed=5), sampling_schedule([3, 3]), torch.zeros(2, dtype=torch.long))
    b = euler_sample(fn, _noise(seed=5), sampling_schedule([3, 3]), torch.zeros(2, dtype=torch.long))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="schedule"):
        euler_sample(fn, _noise(), sampling_schedule([3]), torch.zeros(2, dtype=torch.long))
