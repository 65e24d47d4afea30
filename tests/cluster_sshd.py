"""A private, throw-away sshd on 127.0.0.1 for testing the Ray cluster launcher (local provider).

Used by tests/test_cluster_launcher.py. Nothing system-wide is changed except, when they are
missing and we are root, installing the Debian packages ``openssh-server`` and ``rsync`` and
creating sshd's privilege-separation directory ``/run/sshd``. The daemon:

* listens on a free high port on 127.0.0.1 (never port 22) with its own config, host key,
  ``authorized_keys`` and client key, all in a short scratch directory;
* accepts only the current user with that key;
* gives every session ``HOME=<scratch>/home`` (sshd ``SetEnv``), and ``cd``s there, so
  ``ray up``/``ray submit`` write their ``~/ray_bootstrap_*``, ``~/preprocess.py``, ``~/.bashrc``
  and ``~/.ray/auth_token`` there, not in the real home;
* gives every session ``RAY_TMPDIR=<scratch>/rt``, so the Ray cluster it starts keeps its
  session files (and its ``ray_current_cluster`` address file) away from ``/tmp/ray``, where an
  embedded ``ray.init()`` of another test would find and join it;
* when the kernel allows it (root with CAP_SYS_ADMIN, as in CI), runs as PID 1 of a new PID
  namespace (``unshare --pid --fork --mount-proc``). Everything the launcher starts through it
  lives in that namespace, so ``ray stop`` (which ``ray up`` and ``ray down`` run, and which kills
  every Ray process it can see) cannot touch Ray processes of other tests or other users of the
  machine, and stopping the daemon kills whatever is left of the cluster.

The launcher has no ssh-port option, so clients reach the daemon through ``proxy_command`` (ssh's
``ProxyCommand``, the launcher's ``auth.ssh_proxy_command``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    missing = []
    if not os.path.exists(SSHD):
        missing.append("openssh-server")
    if not (shutil.which("ssh") and shutil.which("ssh-keygen")):
        missing.append("openssh-client")
    if not shutil.which("rsync"):
        missing.append("rsync")
    return missing


def apt_install(packages: list[str], timeout: float = 600) -> None:
    """apt-get update + install `packages` quietly (root only; a no-op otherwise or when empty).
    policy-rc.d in containers stops a package from starting its system service (sshd): we never use it."""
    if not packages or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        subprocess.run(cmd, env=env, check=False, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_tools(timeout: float = 600) -> list[str]:
    """Install what is missing with apt-get (root only). Returns what is still missing."""
    apt_install(missing_tools(), timeout)
    return missing_tools()


def pid_namespace_available() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        r = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "--", "true"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


class PrivateSshd:
    """Start with ``start()``, always ``stop()`` (idempotent)."""

    def __init__(self, root: Path | None = None, use_pid_namespace: bool | None = None):
        # Short path on purpose: Ray's unix sockets live under <root>/rt/session_*/sockets and
        # a unix socket path must stay under 108 bytes.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="dfmcl-", dir="/tmp"))
        self.home = self.root / "home"
        self.ray_tmpdir = self.root / "rt"
        self.user = getpass.getuser()
        self.port = 0
        self.client_key = self.root / "id_ed25519"
        self.log_path = self.root / "sshd.log"
        self.use_pid_namespace = pid_namespace_available() if use_pid_namespace is None else use_pid_namespace
        self.proc: subprocess.Popen | None = None
        self._log = None

    # ssh's ProxyCommand: reaches the private port whatever host the launcher asks for.
    @property
    def proxy_command(self) -> str:
        return f"{sys.executable} -S {HERE / 'cluster_sshproxy.py'} 127.0.0.1 {self.port}"

    def ssh_args(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={os.devnull}",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ProxyCommand={self.proxy_command}",
            f"{self.user}@127.0.0.1",
        ]

    def _write_config(self) -> Path:
        host_key = self.root / "ssh_host_ed25519_key"
        for key in (host_key, self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, stdout=subprocess.DEVNULL
            )
        auth_keys = self.root / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), auth_keys)
        auth_keys.chmod(0o600)
        self.home.mkdir(mode=0o700)
        self.ray_tmpdir.mkdir(mode=0o700)
        cfg = self.root / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth_keys}",
                    f"AllowUsers {self.user}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    # The scratch dir sits under the world-writable /tmp, which StrictModes rejects.
                    "StrictModes no",
                    "UsePAM no",
                    "PrintMotd no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    f"SetEnv HOME={self.home} RAY_TMPDIR={self.ray_tmpdir}",
                    # Sessions start in the private home (sshd itself would cd to the passwd home).
                    'ForceCommand cd "$HOME" && eval "$SSH_ORIGINAL_COMMAND"',
                    "",
                ]
            )
        )
        return cfg

    def start(self, timeout: float = 30) -> "PrivateSshd":
        self.port = free_port()
        cfg = self._write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected its config: {check.stderr}")
        cmd = [SSHD, "-D", "-e", "-f", str(cfg)]
        if self.use_pid_namespace:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL", "--"] + cmd
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.log()}")
            r = subprocess.run(
                self.ssh_args() + ["echo", "ssh-ok"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
            if r.returncode == 0 and "ssh-ok" in r.stdout:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"private sshd did not answer in {timeout}s: {self.log()}")

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.ssh_args() + [command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill the daemon (and, in a PID namespace, every process started through it)."""
        if self.proc is not None and self.proc.poll() is None:
            # unshare ignores SIGTERM while it waits; SIGKILL to the group takes unshare, sshd
            # (PID 1 of the namespace: the kernel then kills the whole namespace) and its sessions.
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
