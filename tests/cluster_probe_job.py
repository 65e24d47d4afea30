"""A tiny job for `ray submit`: proves the launched cluster is usable, independent of the real job.

`ray submit CLUSTER.yaml tests/cluster_probe_job.py -- --out PATH` copies this file to
``~/cluster_probe_job.py`` on the head and runs ``python ~/cluster_probe_job.py --out PATH`` in a
login shell there, so it must not import anything from the repository by path. It joins the
running cluster (``address="auto"``), runs a few tasks and writes what it saw to PATH as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import ray

    ray.init(address="auto")

    @ray.remote(num_cpus=0.5)
    def square(x: int) -> int:
        return x * x

    squares = ray.get([square.remote(i) for i in range(8)])
    report = {
        "squares": squares,
        "alive_nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
        "ray_version": ray.__version__,
        "python": sys.executable,
        "home": os.path.expanduser("~"),
        "cwd": os.getcwd(),
        "ray_auth_mode": os.environ.get("RAY_AUTH_MODE", ""),
        "data_pipeline_importable": _importable("data_pipeline"),
    }
    ray.shutdown()
    with open(args.out, "w") as f:
        json.dump(report, f)
    print("cluster probe ok:", json.dumps(report))


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    main()
