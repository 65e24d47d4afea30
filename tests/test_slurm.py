"""cluster/slurm/*.sbatch against a real one-node Slurm on 127.0.0.1 (slurmctld + slurmd + munge).

`cluster/slurm/dev-cluster.sh up` installs the Debian packages where missing (as root, like CI),
writes a one-node slurm.conf and starts the daemons; it returns at once when they already run.
Jobs run on CPU: 2 tasks over gloo for training, a Ray head and one Ray worker for preprocessing.

* preprocess.sbatch: the tiny real clips -> shards, every clip exactly once (the shards then feed
  the training jobs);
* train.sbatch: a run to the end with a checkpoint and an export; a second run gets USR1 mid-run
  (what `--signal=B:USR1@600` delivers before the time limit): the trainer checkpoints, the script
  requeues the job, the restart resumes and reproduces the uninterrupted run's losses exactly.

Skips only where Slurm cannot be installed (not Linux, or not root with the packages missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import ROOT, read_metrics

from dfm_video.data import schema as S

pytestmark = pytest.mark.slow

SETUP = ROOT / "cluster" / "slurm" / "dev-cluster.sh"
STEPS = 16
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# Two tasks of one CPU on one node; the scripts' own GPU request is lifted (--gres=none); a time limit
# well past the USR1 warning (10 min before it), so only the test sends one.
CPU_JOB = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=none", "--time=60"]


@pytest.fixture(scope="module")
def slurm() -> None:
    if sys.platform != "linux":
        pytest.skip("the Slurm test needs Linux (Debian's slurmctld, slurmd and munge)")
    have = all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not have and os.geteuid() != 0:
        pytest.skip("Slurm is not installed and installing it (apt-get) needs root")
    r = subprocess.run(["bash", str(SETUP), "up"], capture_output=True, text=True, timeout=1200)
    if r.returncode == 3:  # the script's code for "cannot install"
        pytest.skip(f"Slurm cannot be installed here: {r.stderr.strip()[-500:]}")
    assert r.returncode == 0, f"dev-cluster.sh up failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"


def _job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DFM_ROOT=str(ROOT),
        PYTHON=sys.executable,
        PYTHONPATH=str(ROOT),
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _submit(script: str, log: Path, args: list[str]) -> str:
    cmd = ["sbatch", "--parsable", *CPU_JOB, f"--output={log}", str(ROOT / "cluster" / "slurm" / script), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_job_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def _job(job: str) -> dict[str, str]:
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def _wait(job: str, log: Path, timeout: float = 900) -> dict[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = _job(job)
        if info["JobState"] in FINAL:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} did not finish in {timeout} s:\n{log.read_text()[-3000:] if log.exists() else ''}")


@pytest.fixture(scope="module")
def slurm_shards(slurm, tmp_path_factory) -> dict:
    """preprocess.sbatch on the tiny real clips: a Ray head and one Ray worker inside the allocation."""
    tmp = tmp_path_factory.mktemp("slurm-preprocess")
    clips, shards, log = tmp / "clips", tmp / "shards", tmp / "preprocess.log"
    subprocess.run([sys.executable, "-m", "data_pipeline.demo_clips", str(clips)], check=True, cwd=ROOT)
    start = time.time()
    job = _submit(
        "preprocess.sbatch",
        log,
        [
            "--config",
            "configs/preprocess/tiny.yaml",
            "--set",
            f"preprocess.input_dir={clips}",
            "--set",
            f"preprocess.output_dir={shards}",
            "--set",
            "preprocess.progress=false",
        ],
    )
    info = _wait(job, log)
    return {"clips": clips, "shards": shards, "log": log, "info": info, "seconds": time.time() - start}


def test_preprocess_sbatch_ray_head_and_worker_write_every_clip_once(slurm_shards):
    log = slurm_shards["log"].read_text()
    info = slurm_shards["info"]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log[-3000:])
    assert "2 of 2 Ray nodes up" in log, log[-3000:]
    clips = sorted(str(p) for p in slurm_shards["clips"].rglob("*.mp4"))
    keys = [s.key for shard in S.list_shards(slurm_shards["shards"]) for s in S.read_shard(shard)]
    assert len(keys) == len(set(keys)) == len(clips) > 0
    assert S.DatasetInfo.load(slurm_shards["shards"]).num_samples == len(clips)
    print(f"preprocess.sbatch: {len(clips)} clips in {slurm_shards['seconds']:.0f} s")


def _train_args(shards: Path, out: Path) -> list[str]:
    sets = [f"data.shards={shards}", f"train.output_dir={out}", f"train.steps={STEPS}", "train.log_every=1"]
    return ["--config", "tiny.yaml", *[a for s in sets for a in ("--set", s)], "--set", "train.ckpt_every=8"]


def test_train_sbatch_runs_and_a_usr1_requeue_reproduces_the_losses(slurm_shards, tmp_path):
    shards = slurm_shards["shards"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"

    # Uninterrupted: to the end, a checkpoint at the last step and the export.
    log_ref = tmp_path / "ref.log"
    info = _wait(_submit("train.sbatch", log_ref, _train_args(shards, ref)), log_ref)
    text = log_ref.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-3000:])
    assert (ref / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert (ref / "checkpoints" / f"step_{STEPS:08d}" / "COMPLETE").is_file()
    assert (ref / "export").is_dir() and (ref / "config.yaml").is_file()
    want = read_metrics(ref)
    assert sorted(want) == list(range(1, STEPS + 1))

    # Interrupted: USR1 to the batch script once the run has taken a few steps.
    log_cut = tmp_path / "cut.log"
    job = _submit("train.sbatch", log_cut, _train_args(shards, cut))
    metrics, deadline = cut / "metrics.jsonl", time.time() + 600
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        assert _job(job)["JobState"] not in FINAL, log_cut.read_text()[-3000:]
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    start = time.time()
    info = _wait(job, log_cut)
    text = log_cut.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text[-3000:])
    assert "USR1 received" in text and "requeueing job" in text, text[-3000:]
    stopped = re.search(r"SIGTERM: saved checkpoint at step (\d+)", text)
    assert stopped and int(stopped.group(1)) < STEPS, "the signal came after the run had ended: nothing was tested"
    assert info["Restarts"] == "1" and "(restart 1)" in text, (info, text[-3000:])
    # The restart resumed from the SIGTERM checkpoint: no step was logged twice.
    records = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert records == list(range(1, STEPS + 1)), records
    got = read_metrics(cut)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s]["loss/total"] == want[s]["loss/total"], (s, got[s], want[s])
    print(
        f"train.sbatch: stopped at step {stopped.group(1)}; requeue + resume + finish took {time.time() - start:.0f} s"
    )
