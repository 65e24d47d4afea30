"""Fault paths of a training run with the real `deepspeed` launcher (2 CPU ranks over gloo): what a
failure keeps, and that the run continues from it. Faults that real inputs cannot produce on
demand are switched on through dfm_video.faults."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from proc_helpers import kill_group, start_group
from train_helpers import ROOT, cpu_env, deepspeed_cmd, read_metrics, run

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


def test_sigterm_inside_a_long_accumulation_step_saves_at_once(tiny_shards, tmp_path):
    # 4 micro-steps per optimizer step, each held 2 s: the signal lands inside a step, which is abandoned
    # (no update); the previous step is saved at once and the save time printed.
    out = tmp_path / "term"
    cmd = deepspeed_cmd(
        _overrides(
            tiny_shards,
            out,
            "train.steps=1000",
            "train.ckpt_every=1000",
            "distributed.global_batch_size=8",
            "distributed.micro_batch_size=1",
        )
    )
    env = {**cpu_env(), **faults.env(train__micro_step_pause=2.0)}
    proc = start_group(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 400
    while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # inside step 2's 8 s of micro-steps
    sent = time.time()
    kill_group(proc, signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    took = time.time() - sent
    last = max(read_metrics(out))
    assert re.search(rf"SIGTERM: saved checkpoint at step {last} in [0-9.]+ s", log), log[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{last:08d}"
    assert took < 60, took


def test_a_second_trainer_on_a_run_folder_is_refused_naming_the_first(tiny_shards, tmp_path):
    out = tmp_path / "busy"
    first_cmd = deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=1000", "train.ckpt_every=1000"))
    env = {**cpu_env(), **faults.env(train__micro_step_pause=1.0)}
    first = start_group(first_cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 400
        while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        r = run(deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=1000")))
        assert r.returncode == 2, r.stderr[-3000:]
        assert re.search(r"is in use by another trainer: pid \d+ on host \S+, started ", r.stderr), r.stderr[-2000:]
        assert first.poll() is None  # the first run goes on
    finally:
        kill_group(first, signal.SIGKILL)
        first.communicate(timeout=60)
    r = run(deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=1")))  # the killed holder's lock is stale
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_world_size_conversion_is_done_before_the_process_group_and_kept_across_a_restart(tiny_shards, tmp_path):
    out = tmp_path / "conv"
    batch = ("distributed.global_batch_size=6", "distributed.micro_batch_size=3", "train.ckpt_every=2")
    r = run(deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=2", *batch)))  # 2 ranks
    assert r.returncode == 0, r.stderr[-3000:]
    resume = deepspeed_cmd(_overrides(tiny_shards, out, "train.steps=3", *batch), nproc=1)
    # killed right after the conversion, as a restart loop's first attempt would be
    r = run(resume, env=faults.env(checkpoint__crash_after_conversion=True))
    assert r.returncode != 0
    assert (out / "checkpoints" / ".universal" / "step_00000002" / "CONVERTED").is_file()
    measured = re.search(r"converted ([0-9.]+) GB in ([0-9.]+) s \(([0-9]+) s/GB\)", r.stdout)
    assert measured, r.stdout[-3000:]
    print(f"conversion: {measured.group(0)}")
    r = run(resume)  # the restart reuses the finished conversion, loads it and removes it
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reusing the universal checkpoint converted earlier" in r.stdout and "at step 2" in r.stdout
    assert not (out / "checkpoints" / ".universal").exists()
    assert sorted(read_metrics(out)) == [1, 2, 3]
