"""Two "nodes" on this one machine for DeepSpeed's multi-node launcher (`deepspeed --hostfile`).

Used by tests/test_train_multinode_deepspeed.py. The nodes are two ssh host names (``node0``,
``node1``) that an ssh client config points at one private sshd on 127.0.0.1
(tests/cluster_sshd.py: its own port, keys and config, a private ``HOME`` for every session, a PID
namespace where the kernel allows one). Nothing system-wide is changed except, when they are
missing and we are root, installing the Debian packages ``openssh-server``, ``openssh-client``,
``rsync`` (cluster_sshd.ensure_tools) and ``pdsh`` (the launcher DeepSpeed uses by default).

OpenSSH reads ``~/.ssh/config`` from the passwd entry's home, not from ``$HOME``, so the client
config cannot be slipped in through a private ``HOME``. Instead a two-line ``ssh`` wrapper
(``exec /usr/bin/ssh -F <config> "$@"``) sits first on the launcher's ``PATH``: both DeepSpeed's
own reachability check (``ssh node0 hostname``) and pdsh (which execs ``ssh``) go through it. On a
real cluster the same lines belong in ``~/.ssh/config``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import cluster_sshd


def missing_tools() -> list[str]:
    missing = cluster_sshd.missing_tools()
    if not shutil.which("pdsh"):
        missing.append("pdsh")
    return missing


def ensure_tools(timeout: float = 600) -> list[str]:
    """cluster_sshd's packages, then pdsh, with apt-get (root only). Returns what is still missing."""
    cluster_sshd.ensure_tools(timeout=timeout)
    cluster_sshd.apt_install(missing_tools(), timeout)
    return missing_tools()


def write_ssh_client(sshd: cluster_sshd.PrivateSshd, hosts: Iterable[str]) -> Path:
    """An ssh client config mapping every name in ``hosts`` to the private sshd, and a ``bin/ssh``
    wrapper that uses it. Returns the ``bin`` folder to put first on ``PATH``."""
    real_ssh = shutil.which("ssh")
    if real_ssh is None:
        raise RuntimeError("no ssh client on PATH")
    config = sshd.root / "ssh_config"
    config.write_text(
        "\n".join(
            [
                f"Host {' '.join(hosts)}",
                "    HostName 127.0.0.1",
                f"    Port {sshd.port}",
                f"    User {sshd.user}",
                f"    IdentityFile {sshd.client_key}",
                "    IdentitiesOnly yes",
                "    BatchMode yes",
                "    StrictHostKeyChecking no",
                f"    UserKnownHostsFile {os.devnull}",
                "    LogLevel ERROR",
                "    ConnectTimeout 30",
                "",
            ]
        )
    )
    bin_dir = sshd.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {real_ssh} -F {config} "$@"\n')
    wrapper.chmod(0o755)
    return bin_dir


def write_hostfile(path: Path, hosts: Iterable[str], slots: int = 1) -> Path:
    path.write_text("".join(f"{h} slots={slots}\n" for h in hosts))
    return path


def write_deepspeed_env(home: Path, env: dict[str, str]) -> Path:
    """``~/.deepspeed_env``: KEY=VALUE lines the launcher exports on every node (pdsh launcher)."""
    path = home / ".deepspeed_env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path
