"""Shared helpers for the tests that launch real training (deepspeed / torchrun over gloo on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from proc_helpers import run_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def make_tiny_shards(out: Path) -> Path:
    """Real clips -> the real Ray pipeline (subprocess) -> pixel-codec pyramid shards."""
    clips = out / "clips"
    shards = out / "shards"
    subprocess.run(
        [sys.executable, "-m", "data_pipeline.demo_clips", str(clips)], check=True, cwd=ROOT, capture_output=True
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline.preprocess",
            "--config",
            "configs/preprocess/tiny.yaml",
            "--set",
            f"preprocess.input_dir={clips}",
            "--set",
            f"preprocess.output_dir={shards}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=cpu_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return shards


def deepspeed_cmd(
    overrides: Sequence[str], *, nproc: int = 2, config: str = "tiny.yaml", extra: Sequence[str] = ()
) -> list[str]:
    cmd = [
        str(BIN / "deepspeed"),
        "--num_gpus",
        str(nproc),
        "--master_port",
        str(free_port()),
        "dfm_video/train.py",
        "--config",
        config,
    ]
    for o in overrides:
        cmd += ["--set", o]
    return cmd + list(extra)


def torchrun_node_cmd(
    overrides: Sequence[str], *, node_rank: int, port: int, nnodes: int = 2, config: str = "tiny.yaml"
) -> list[str]:
    """Node `node_rank` of a `torchrun --nnodes` launch of dfm_video/train.py: one rank per node, all on 127.0.0.1."""
    cmd = [
        str(BIN / "torchrun"),
        "--nnodes",
        str(nnodes),
        "--node_rank",
        str(node_rank),
        "--nproc_per_node",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "dfm_video/train.py",
        "--config",
        config,
    ]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def run(cmd: Sequence[str], timeout: float = 600, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`env`: extra variables (faults: `dfm_video.faults.env(...)`) on top of cpu_env()."""
    return run_group(cmd, timeout, cwd=ROOT, env={**cpu_env(), **(env or {})})


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """step -> metrics, the LAST record of each step (a resumed run re-logs steps after its checkpoint)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec
    return out
