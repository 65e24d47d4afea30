"""Memory planner (activation checkpointing `auto`), fused AdamW and the EMA formula (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from dfm_video.config import load_config
from dfm_video.config.schema import ModelConfig
from dfm_video.models.memory import Layout, estimate_peak, plan_memory
from dfm_video.train.config_changes import compare_configs
from dfm_video.train.ema import EMA
from dfm_video.train.memory_setup import plan_checkpointing, training_layout
from dfm_video.train.metrics import SectionTimer
from dfm_video.train.trainer import build_optimizer, use_fused_adamw

GIB = 2**30
K700_LATENT = (13, 64, 64)  # CogVideoX latent of a 49-frame 512 px clip: 13 x 32 x 32 tokens
LONG_LATENT = (31, 64, 64)


def _k700(**dist: object) -> object:
    cfg = load_config("k700.yaml")
    return dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, **dist))


def test_checkpointing_values_and_old_booleans() -> None:
    assert ModelConfig(activation_checkpointing=True).activation_checkpointing == "full"
    assert ModelConfig(activation_checkpointing=False).activation_checkpointing == "none"
    assert ModelConfig().activation_checkpointing == "none"
    for value in ("none", "selective", "full", "auto"):
        cfg = load_config("tiny.yaml", [f"model.activation_checkpointing={value}"])
        assert cfg.model.activation_checkpointing == value
    assert load_config("tiny.yaml", ["model.activation_checkpointing=true"]).model.activation_checkpointing == "full"
    with pytest.raises(ValueError, match="model.activation_checkpointing.*'some'"):
        load_config("tiny.yaml", ["model.activation_checkpointing=some"])


def test_planner_picks_the_cheapest_policy_that_fits() -> None:
    # DiT3D-XL at 13,312 tokens, ZeRO-2 over 16 ranks (configs/k700.yaml's layout)
    lay = training_layout(_k700(micro_batch_size=2), K700_LATENT, 16)
    assert lay.tokens == 13_312 and lay.depth == 28 and lay.hidden_size == 1152
    assert plan_memory(lay, 80 * GIB).policy == "none"  # H100 80 GB: micro 2 runs without recomputation
    assert plan_memory(lay, 64 * GIB).policy == "selective"
    assert plan_memory(lay, 24 * GIB).policy == "full"
    lay4 = dataclasses.replace(lay, micro_batch=4)
    assert plan_memory(lay4, 80 * GIB).policy == "selective"
    assert plan_memory(lay4, 141 * GIB).policy == "none"  # H200
    # more ranks shrink the model states under ZeRO, sequence parallelism the activations
    one = dataclasses.replace(lay, world_size=1, micro_batch=1)
    assert estimate_peak(one, "full") > estimate_peak(dataclasses.replace(one, world_size=8), "full")
    sp = dataclasses.replace(lay, sequence_parallel=8)
    assert estimate_peak(sp, "none") < estimate_peak(lay, "none") / 3
    # an explicit policy is kept, whatever the memory
    assert plan_memory(lay, 1 * GIB, "full").policy == "full"


def test_planner_calibration_point() -> None:
    # the one measured point: one H200, ZeRO-2, micro 1, full checkpointing at the k700 shape peaked
    # at 25.4 GiB (docs/performance.md); the model must be within 10% of it
    lay = training_layout(_k700(micro_batch_size=1), K700_LATENT, 1)
    assert abs(estimate_peak(lay, "full") / GIB - 25.4) < 2.5


def test_planner_refuses_a_layout_that_cannot_fit() -> None:
    lay = training_layout(_k700(micro_batch_size=8), K700_LATENT, 1)
    with pytest.raises(ValueError, match=r"does not fit in 15\.2 GiB.*none .* GiB, selective .* full .*micro batch 8"):
        plan_memory(lay, 16 * GIB)


def test_shipped_configs_plan_on_an_80gb_h100() -> None:
    cfg = load_config("k700.yaml")
    assert cfg.model.activation_checkpointing == "auto"
    assert plan_checkpointing(cfg, [K700_LATENT], 16, 80 * GIB).policy == "none"
    long = load_config("k700-long.yaml")
    assert long.model.activation_checkpointing == "auto"
    assert plan_checkpointing(long, [LONG_LATENT], 128, 80 * GIB).policy == "none"
    # the same runs on a 40 GB card recompute
    assert plan_checkpointing(cfg, [K700_LATENT], 16, 40 * GIB).policy == "selective"


def test_planner_rejects_unknown_layout_values() -> None:
    lay = Layout(depth=2, hidden_size=64, num_params=1000, tokens=16, micro_batch=1, zero_stage=2, world_size=1)
    with pytest.raises(ValueError, match="unknown activation checkpointing policy 'some'"):
        plan_memory(lay, GIB, "some")


def _adam_run(fused: str, steps: int = 6) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    cfg = load_config("tiny.yaml", [f"optim.fused={fused}", "optim.weight_decay=0.05"])
    groups = [
        {"params": [model[0].weight, model[2].weight], "weight_decay": 0.05},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
    ]
    opt = build_optimizer(cfg, groups, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 16, generator=g)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_fused_adamw_matches_the_loop_after_several_steps() -> None:
    assert use_fused_adamw(True, torch.device("cpu")) and not use_fused_adamw(False, torch.device("cuda"))
    assert use_fused_adamw("auto", torch.device("cuda")) and not use_fused_adamw("auto", torch.device("cpu"))
    m_loop, o_loop = _adam_run("false")
    m_fused, o_fused = _adam_run("true")
    assert o_fused.defaults["fused"] and not o_loop.defaults["fused"]
    # Same formula, different kernels: the fused one computes in another order (fp32), so the state
    # agrees to a few ulps rather than bit for bit.
    for p_loop, p_fused in zip(m_loop.parameters(), m_fused.parameters()):
        torch.testing.assert_close(p_fused, p_loop, rtol=1e-6, atol=1e-7)
        s_loop, s_fused = o_loop.state[p_loop], o_fused.state[p_fused]
        assert float(s_loop["step"]) == float(s_fused["step"]) == 6
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s_fused[key], s_loop[key], rtol=1e-6, atol=1e-9)


def test_ema_follows_the_formula_step_by_step() -> None:
    # ema <- d * ema + (1 - d) * w, checked in float64 every step; d = 0.9 makes swapping d and 1 - d
    # (or updating from the old weights) an error of order 1, far outside float32 rounding
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    d = 0.9
    ema = EMA(model, d)
    ref = [p.detach().double().clone() for p in model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        ref = [d * r + (1 - d) * p.detach().double() for r, p in zip(ref, model.parameters())]
        for r, s in zip(ref, ema.shadow):
            assert s.dtype == torch.float32
            torch.testing.assert_close(s.double(), r, rtol=1e-6, atol=1e-6)


def test_section_timer_reports_the_mean_and_resets() -> None:
    timer = SectionTimer(torch.device("cpu"))
    for _ in range(3):
        timer.start()
        torch.randn(200, 200) @ torch.randn(200, 200)
        timer.stop()
    ms = timer.mean_ms()
    assert ms > 0 and timer.mean_ms() == 0.0
    with pytest.raises(RuntimeError, match="without start"):
        timer.stop()


def test_resume_accepts_a_new_memory_policy_or_optimizer_kernel() -> None:
    # a run saved with `activation_checkpointing: true` and no optim.fused resumes under auto / fused
    old = {"model": {"activation_checkpointing": True, "depth": 2}, "optim": {"lr": 1e-4}}
    new = {"model": {"activation_checkpointing": "auto", "depth": 2}, "optim": {"lr": 1e-4, "fused": "auto"}}
    lines = compare_configs(old, new)
    assert len(lines) == 2 and all("(harmless)" in line for line in lines)
    with pytest.raises(ValueError, match="model.depth"):  # the rest of the model section still guards
        compare_configs(old, {**new, "model": {"activation_checkpointing": "auto", "depth": 3}})
