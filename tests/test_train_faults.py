"""Fault paths of a training run with the real `deepspeed` launcher (2 CPU ranks over gloo): what a
failure keeps, and that the run continues from it. Faults that real inputs cannot produce on
demand are switched on through dfm_video.faults."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import deepspeed_cmd, run

from dfm_video import faults

pytestmark = pytest.mark.slow


def _overrides(shards: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.shards={shards}", f"train.output_dir={out}", "train.log_every=1", *extra]


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if ".run_token" not in p.name)


def test_overwrite_deletes_nothing_before_the_engine_is_built(tiny_shards, tmp_path):
    out = tmp_path / "run"
    r = run(deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=2", "train.ckpt_every=2")))
    assert r.returncode == 0, r.stderr[-3000:]
    before = _tree(out)
    r = run(
        deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=2"), extra=["--resume", "none", "--overwrite"]),
        env=faults.env(train__engine_init_error=True),
    )
    assert r.returncode != 0 and "engine_init_error" in r.stderr
    assert _tree(out) == before  # the old run is whole: its checkpoint, config and metrics


def test_a_checkpoint_of_non_finite_weights_never_becomes_latest(tiny_shards, tmp_path):
    out = tmp_path / "nanw"
    r = run(
        deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=6", "train.ckpt_every=2", "train.keep_last=1")),
        env=faults.env(train__nan_weights={"at_step": 4}),
    )
    assert r.returncode == 3, r.stderr[-3000:]
    assert "step 4: the model weights hold NaN or inf; no checkpoint was written" in r.stderr
    assert "still names step_00000002" in r.stderr
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert (ckpts / "step_00000002" / "COMPLETE").is_file() and not list(ckpts.glob("step_00000004*"))
