"""The README's multi-node command, for real: DeepSpeed's hostfile launcher (ssh check + pdsh) with
two "nodes" on this machine, one CPU rank each over gloo, training configs/tiny.yaml together.

    deepspeed --hostfile hostfile --master_addr node0 --master_port 29500 dfm_video/train.py --config k700.yaml

What stands in for a cluster (tests/multinode_helpers.py, tests/cluster_sshd.py):

* a private sshd on a free high port of 127.0.0.1 (own keys and config, every session gets
  ``HOME=<scratch>/home``, PID namespace where the kernel allows one, so stopping it kills
  whatever the launcher left);
* an ssh client config that maps ``node0`` and ``node1`` to it, used through an ``ssh`` wrapper
  first on the launcher's ``PATH`` (ssh ignores ``$HOME`` when it looks for ``~/.ssh/config``);
* the hostfile ``node0 slots=1`` / ``node1 slots=1``;
* ``~/.deepspeed_env`` (in the shared private home) with ``DS_ACCELERATOR=cpu`` and
  ``OMP_NUM_THREADS=1``: sshd passes no client environment, so the ranks only get what the pdsh
  launcher exports from that file (plus PYTHON* variables, which it always exports).

``--master_addr`` is 127.0.0.1 rather than ``node0``: ``node0`` exists only for ssh, not for the
resolver that gloo uses, and /etc/hosts is left alone.

As root it installs the Debian packages it needs when missing: openssh-server, openssh-client,
rsync, pdsh. It skips only when it cannot run (not Linux, or not root with one of them missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cluster_sshd
import multinode_helpers as mh
import pytest
import torch
from proc_helpers import kill_by_environ, run_group, wait_gone
from safetensors.torch import load_file
from train_helpers import BIN, ROOT, cpu_env, deepspeed_cmd, free_port, read_metrics, run

pytestmark = pytest.mark.slow

HOSTS = ("node0", "node1")
STEPS = 4


def _overrides(shards: Path, out: Path) -> list[str]:
    return [f"data.shards={shards}", f"train.output_dir={out}", "train.log_every=1", f"train.steps={STEPS}"]


def _prerequisites() -> None:
    if sys.platform != "linux":
        pytest.skip("the multi-node launcher test needs Linux (sshd, pdsh, /proc)")
    if not (BIN / "deepspeed").exists():
        pytest.skip(f"needs pytest to run from the virtualenv with deepspeed's CLI ({BIN / 'deepspeed'} missing)")
    missing = mh.ensure_tools()
    if missing:
        if os.geteuid() != 0:
            pytest.skip(f"not root and {', '.join(missing)} missing: cannot run a private sshd + pdsh")
        pytest.fail(f"apt-get could not install {', '.join(missing)}")


@pytest.mark.timeout(600)
def test_deepspeed_hostfile_launch_trains_on_two_nodes(tiny_shards, tmp_path):
    _prerequisites()
    sshd = cluster_sshd.PrivateSshd()
    marker = f"HOME={sshd.home}"  # in the environment of everything the launch starts, here and on the "nodes"
    out = tmp_path / "run"
    result = None
    passed = False
    try:
        sshd.start()
        bin_dir = mh.write_ssh_client(sshd, HOSTS)
        hostfile = mh.write_hostfile(sshd.root / "hostfile", HOSTS, slots=1)
        ds_env = mh.write_deepspeed_env(sshd.home, {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
        env = cpu_env()
        env.update(HOME=str(sshd.home), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")

        # Both names reach the private sshd with plain `ssh NAME`, as DeepSpeed's check runs it.
        for host in HOSTS:
            r = subprocess.run(
                ["ssh", "-o", "PasswordAuthentication=no", host, "hostname"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert r.returncode == 0, f"ssh {host}: {r.stderr}\nsshd:\n{sshd.log()}"

        cmd = [
            str(BIN / "deepspeed"),
            "--hostfile",
            str(hostfile),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "dfm_video/train.py",
            "--config",
            "tiny.yaml",
        ]
        for o in _overrides(tiny_shards, out):
            cmd += ["--set", o]
        t0 = time.time()
        # its own process group: a timeout kills pdsh and the ssh sessions too
        result = run_group(cmd, 300, raise_on_timeout=False, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        elapsed = time.time() - t0
        log = result.stdout + result.stderr
        assert result.returncode == 0, f"launcher failed ({elapsed:.0f}s):\n{log[-6000:]}\nsshd:\n{sshd.log()}"

        # The multi-node path ran: ~/.deepspeed_env read, pdsh over both hosts, a world of 2.
        assert f"deepspeed_env file = {ds_env}" in log, log[-3000:]
        assert "pdsh -S -f 1024 -w node0,node1" in log and "export DS_ACCELERATOR=cpu" in log, log[-3000:]
        assert "node0: " in log and "node1: " in log, log[-3000:]
        assert "dist_world_size=2" in log, log[-3000:]
        assert sshd.log().count("Accepted publickey") >= 3  # the check + one session per node
        # Only global rank 0 (on node0) logs training steps.
        assert f"node0: step {STEPS} |" in result.stdout and "node1: step" not in result.stdout

        m = read_metrics(out)
        assert sorted(m) == list(range(1, STEPS + 1)), sorted(m)
        ckpt = out / "checkpoints" / f"step_{STEPS:08d}"
        assert (ckpt / "COMPLETE").is_file()
        assert (ckpt / "ema.safetensors").is_file() and json.loads((ckpt / "meta.json").read_text())["world_size"] == 2
        assert sorted(p.name for p in ckpt.glob("zero_pp_rank_*_optim_states.pt")) == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
        assert (out / "export" / "model.safetensors").is_file()

        # The launcher tore its nodes down: nothing it started is still running.
        left = wait_gone(marker, timeout=15)
        assert not left, f"processes left after the launcher returned: {left}"

        # Same job on one node with 2 ranks (`deepspeed --num_gpus 2`): the two nodes formed one
        # world of 2 (same data split, same gloo all-reduce), so the runs are bit-identical.
        single = tmp_path / "single"
        r = run(deepspeed_cmd(_overrides(tiny_shards, single), nproc=2), timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        ref = read_metrics(single)
        for s in range(1, STEPS + 1):
            assert m[s]["loss/total"] == ref[s]["loss/total"], (s, m[s]["loss/total"], ref[s]["loss/total"])
            assert m[s]["grad_norm"] == ref[s]["grad_norm"], (s, m[s]["grad_norm"], ref[s]["grad_norm"])
        a = load_file(str(out / "export" / "model.safetensors"))
        b = load_file(str(single / "export" / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        passed = True
    finally:
        sshd.stop()  # in a PID namespace this kills every process started through it
        kill_by_environ(marker)  # without one: whatever carries the private HOME
        if not passed:
            keep = tmp_path / "logs"
            keep.mkdir(exist_ok=True)
            if result is not None:
                (keep / "launcher.log").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
            if sshd.log_path.exists():
                shutil.copy(sshd.log_path, keep / "sshd.log")
        sshd_alive = sshd.proc is not None and sshd.proc.poll() is None
        survivors = wait_gone(marker, timeout=10)
        sshd.cleanup()
    assert not sshd_alive, "the private sshd survived teardown"
    assert not survivors, f"processes of the test cluster survived teardown: {survivors}"
