"""Sequence parallelism (DeepSpeed-Ulysses, dfm_video/parallel): validation, exact equivalence with
the unsplit model under torchrun (gloo all-to-all on CPU), and real DeepSpeed training runs whose
losses equal the unsplit runs'. The long-clip configs load and validate."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import BIN, deepspeed_cmd, free_port, read_metrics, run

from dfm_video.config import load_config
from dfm_video.dfm import level_shapes
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.parallel import check_sequence_parallel
from dfm_video.parallel.setup import sequence_parallel_ds_config

# -- validation (no process group) ---------------------------------------------------------------


def _cfg(*overrides: str):
    return load_config("tiny.yaml", list(overrides))


def test_valid_layouts_pass_and_n1_needs_nothing():
    assert check_sequence_parallel(_cfg(), 3, (9, 8, 8)) == 1  # N = 1: any world, any tokens
    assert check_sequence_parallel(_cfg("distributed.sequence_parallel=4"), 8, (9, 8, 8)) == 4  # 144 tokens


@pytest.mark.parametrize(
    "overrides,world,shape,expected",
    [
        (
            ["distributed.sequence_parallel=3"],
            6,
            (9, 8, 8),
            "must divide the attention heads: model 'DiT3D-S' has 4 heads",
        ),
        (
            ["distributed.sequence_parallel=2"],
            3,
            (9, 8, 8),
            "distributed.sequence_parallel=2 must divide the world size 3",
        ),
        (["distributed.sequence_parallel=4"], 4, (3, 4, 6), "token grid (3, 2, 3) = 18 tokens (18 % 4 = 2)"),
        (["distributed.sequence_parallel=2"], 4, (5, 6, 6), "token grid (5, 3, 3) = 45 tokens (45 % 2 = 1)"),
        (
            ["distributed.sequence_parallel=2", "model.compile=true"],
            2,
            (9, 8, 8),
            "model.compile=true is not supported",
        ),
    ],
)
def test_bad_layouts_name_the_values(overrides, world, shape, expected):
    with pytest.raises(ValueError) as e:
        check_sequence_parallel(_cfg(*overrides), world, shape)
    assert expected in str(e.value) and "distributed.sequence_parallel" in str(e.value)


def test_zero3_uses_the_sequence_aware_gradient_reduction():
    ds = {"train_batch_size": 4, "zero_optimization": {"stage": 3, "contiguous_gradients": True}}
    assert sequence_parallel_ds_config(ds, 1) is ds
    got = sequence_parallel_ds_config(ds, 2)
    assert got["zero_optimization"] == {"stage": 3, "contiguous_gradients": True, "reduce_scatter": False}
    assert "reduce_scatter" not in ds["zero_optimization"]  # a copy
    z2 = {"zero_optimization": {"stage": 2}}
    assert sequence_parallel_ds_config(z2, 2) == z2


def test_sequence_parallel_below_one_is_a_config_error():
    with pytest.raises(ValueError, match="distributed.sequence_parallel.*expected >= 1, got 0"):
        _cfg("distributed.sequence_parallel=0")


def test_long_clip_configs_load_and_validate():
    cfg = load_config("k700-long.yaml")
    pre = load_config("configs/preprocess/k700-long.yaml")
    p = pre.preprocess
    # CogVideoX: causal 4x in time, 8x in space
    latent = (1 + (p.num_frames - 1) // 4, p.resolution[0] // 8, p.resolution[1] // 8)
    assert p.num_frames == 121 and tuple(p.resolution) == (512, 512) and latent == (31, 64, 64)
    assert p.autoencoder == "cogvideox" and p.num_frames / p.fps <= 10.0  # fits a 10 s Kinetics clip
    assert [list(f) for f in pre.dfm.factors] == [
        list(f) for f in cfg.dfm.factors
    ] and pre.dfm.temporal_mode == cfg.dfm.temporal_mode
    assert any(f[0] == 2 for f in cfg.dfm.factors) and cfg.dfm.temporal_mode == "causal"  # steps in time too
    assert cfg.model.activation_checkpointing and cfg.distributed.sequence_parallel == 8
    assert level_shapes(latent, cfg.dfm.factors, cfg.dfm.temporal_mode) == [(16, 32, 32), (31, 64, 64)]
    grids = {
        token_grid(s, p_, cfg.dfm.temporal_mode)
        for s, p_ in zip(
            level_shapes(latent, cfg.dfm.factors, "causal"), stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)
        )
    }
    assert grids == {(16, 32, 32)}
    assert check_sequence_parallel(cfg, 128, latent) == 8
    accum = cfg.distributed.global_batch_size // (cfg.distributed.micro_batch_size * 128 // 8)
    assert accum * cfg.distributed.micro_batch_size * 16 == cfg.distributed.global_batch_size


# -- exact equivalence under torchrun (forward, loss, gradients, sampling) ------------------------


@pytest.mark.slow
@pytest.mark.parametrize("nproc,sizes", [(2, ["2"]), (4, ["2", "4"])])
def test_split_model_equals_the_unsplit_model(nproc, sizes):
    # 4 ranks with N=2: two sequence groups on different batches (data parallel); N=4: one group
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        "tests/sp_equivalence_job.py",
        *sizes,
    ]
    r = run(cmd, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for n in sizes:
        assert f"SP-OK N={n} world={nproc}" in r.stdout, r.stdout[-2000:]


# -- real DeepSpeed training ------------------------------------------------------------------------


def _train(shards, out, nproc: int, *extra: str, args=()):
    o = [
        f"data.shards={shards}",
        f"train.output_dir={out}",
        "train.log_every=1",
        "train.steps=5",
        "train.ckpt_every=5",
        *extra,
    ]
    return run(deepspeed_cmd(o, nproc=nproc, extra=list(args)))


@pytest.fixture(scope="module")
def sp_runs(tiny_shards, tmp_path_factory):
    """5 fp32 steps: unsplit on 1 and 2 ranks (ZeRO-2), N=2 on 2 ranks (one group, ZeRO-2) and on 4
    ranks (two groups, ZeRO-3: its gradient reduction needs sequence_parallel_ds_config)."""
    layouts = {"w1": (1, 1, 2), "w2": (2, 1, 2), "w2-sp2": (2, 2, 2), "w4-sp2": (4, 2, 3)}
    runs = {}
    for name, (nproc, n, zero) in layouts.items():
        out = tmp_path_factory.mktemp(name)
        r = _train(tiny_shards, out, nproc, f"distributed.sequence_parallel={n}", f"distributed.zero_stage={zero}")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        runs[name] = (out, r.stdout)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("split,ref,groups", [("w2-sp2", "w1", 1), ("w4-sp2", "w2", 2)])
def test_sequence_parallel_training_equals_the_unsplit_run(sp_runs, split, ref, groups):
    (out, stdout), (ref_out, _) = sp_runs[split], sp_runs[ref]
    assert f"sequence parallel: 2 ranks per batch, {groups} data-parallel group(s)" in stdout
    got, want = read_metrics(out), read_metrics(ref_out)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5]
    for s in want:
        assert got[s]["loss/total"] == pytest.approx(want[s]["loss/total"], rel=1e-5, abs=1e-6), s
        assert got[s]["grad_norm"] == pytest.approx(want[s]["grad_norm"], rel=1e-5, abs=1e-6), s
        assert got[s]["perf/samples_per_s"] > 0
    losses = [want[s]["loss/total"] for s in want]
    assert len(set(losses)) == 5  # the runs do move: equal losses are not a constant
    a, b = (
        load_file(str(out / "export" / "model.safetensors")),
        load_file(str(ref_out / "export" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.slow
def test_a_sequence_parallel_checkpoint_resumes_without_it(sp_runs, tiny_shards, tmp_path):
    src, _ = sp_runs["w2-sp2"]
    out = tmp_path / "resumed"
    shutil.copytree(src / "checkpoints", out / "checkpoints")
    r = _train(tiny_shards, out, 2, "distributed.sequence_parallel=1", "train.steps=6", args=["--resume", "auto"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 5" in r.stdout and "sequence parallel" not in r.stdout
    m = read_metrics(out)
    assert sorted(m) == [6] and math.isfinite(m[6]["loss/total"]) and math.isfinite(m[6]["grad_norm"])
    # the same step from the unsplit run's checkpoint (w1 equals w2-sp2 step for step), resumed the same way
    ref = tmp_path / "resumed-unsplit"
    shutil.copytree(sp_runs["w1"][0] / "checkpoints", ref / "checkpoints")
    r = _train(tiny_shards, ref, 2, "distributed.sequence_parallel=1", "train.steps=6", args=["--resume", "auto"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = read_metrics(ref)
    assert sorted(want) == [6]
    assert m[6]["loss/total"] == pytest.approx(want[6]["loss/total"], rel=1e-5, abs=1e-6)
    assert m[6]["grad_norm"] == pytest.approx(want[6]["grad_norm"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_bad_split_fails_before_any_process_group(tiny_shards, tmp_path):
    r = _train(tiny_shards, tmp_path / "x", 1, "distributed.sequence_parallel=2")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "distributed.sequence_parallel=2 must divide the world size 1" in r.stderr
    assert "init_distributed" not in r.stdout + r.stderr and not (tmp_path / "x").exists()
