"""Minimal ssh ``ProxyCommand``: pipe stdin/stdout to ``HOST:PORT`` (like ``nc HOST PORT``).

The Ray cluster launcher has no ``ssh_port`` setting; it always runs ``ssh user@head_ip``. To
reach an sshd on another port, ``auth.ssh_proxy_command`` is passed to ssh as ``ProxyCommand``.
``nc %h 2222`` (netcat-openbsd) does the same job on a real cluster; this stdlib-only script
avoids one more apt package in the test (tests/test_cluster_launcher.py).

Usage: python cluster_sshproxy.py HOST PORT
"""

from __future__ import annotations

import os
import socket
import sys
import threading


def _stdin_to_socket(sock: socket.socket) -> None:
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: cluster_sshproxy.py HOST PORT", file=sys.stderr)
        return 2
    sock = socket.create_connection((argv[0], int(argv[1])), timeout=30)
    sock.settimeout(None)
    threading.Thread(target=_stdin_to_socket, args=(sock,), daemon=True).start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        return 1
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
