"""Resource planning and cluster checks of the preprocessing job, all before any clip is read.

- `check_config`: values that can never work (object-store URLs, zero sizes) -> ValueError.
- `plan`: what every stage asks Ray for, counted in full: `decode_concurrency x decode_cpus` decode
  tasks (split layout), `encode_actors x (encode_cpus, encode_gpus)` actors (which also write the
  shards: there is no separate writer any more), and the largest single request (one actor's GPUs
  must fit on one node).
- `check_resources`: refuse a request the cluster can never grant (Ray would wait forever).
- `wait_for_resources`: on an autoscaling cluster the nodes may still be coming: with
  `preprocess.resource_wait_s > 0` the job waits (printing what is missing) up to that long.
- `preflight`: one zero-CPU task per alive node checks that `input_dir`, `output_dir` and
  `autoencoder_path` exist there, and names each node that lacks one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from data_pipeline.decode import import_torchcodec
from dfm_video.config.schema import Config, PreprocessConfig

log = logging.getLogger("data_pipeline.resources")

URL_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "hdfs://", "http://", "https://")


def check_config(p: PreprocessConfig) -> None:
    """ValueError naming the key for settings that can never run."""
    for key in ("input_dir", "output_dir", "annotations", "labels_file", "autoencoder_path"):
        value = str(getattr(p, key) or "")
        if value.lower().startswith(URL_SCHEMES) or "://" in value:
            raise ValueError(
                f"preprocess.{key}='{value}': object-store URLs are not supported (decoders and shard writers "
                f"open local paths); mount the bucket on every node (e.g. mountpoint-s3, s3fs, gcsfuse) or use a "
                f"shared filesystem, and give the mounted path"
            )
    for key in ("clips_per_task", "samples_per_shard", "encode_actors", "decode_workers"):
        if getattr(p, key) < 1:
            raise ValueError(f"preprocess.{key}={getattr(p, key)} must be at least 1")
    if p.decode_timeout_s <= 0:
        raise ValueError(f"preprocess.decode_timeout_s={p.decode_timeout_s} must be positive")
    if p.decode_concurrency is not None and p.decode_concurrency < 1:
        raise ValueError(f"preprocess.decode_concurrency={p.decode_concurrency} must be at least 1 (or null)")
    if p.layout not in ("split", "fused"):
        raise ValueError(f"preprocess.layout='{p.layout}' must be 'split' or 'fused'")
    if p.decoder == "torchcodec_cuda" and (p.layout != "fused" or p.encode_gpus <= 0):
        raise ValueError(
            f"preprocess.decoder='torchcodec_cuda' decodes on the encoder's GPU: it needs preprocess.layout='fused' "
            f"and preprocess.encode_gpus > 0 (got layout='{p.layout}', encode_gpus={p.encode_gpus})"
        )
    if p.decoder.startswith("torchcodec"):
        try:
            import_torchcodec()
        except ImportError as exc:
            raise ValueError(f"preprocess.decoder='{p.decoder}': {exc}") from exc


@dataclass
class ResourcePlan:
    cpus: float  # the least CPUs the job needs to run every stage at once
    gpus: float
    per_actor_gpus: float
    lines: list[str]  # what each stage asks for, for messages


def plan(p: PreprocessConfig) -> ResourcePlan:
    lines = []
    cpus = p.encode_actors * p.encode_cpus
    gpus = p.encode_actors * p.encode_gpus
    lines.append(
        f"encode_actors x encode_cpus = {p.encode_actors} x {p.encode_cpus} CPUs"
        + (f", encode_actors x encode_gpus = {p.encode_actors} x {p.encode_gpus} GPUs" if p.encode_gpus else "")
    )
    if p.layout == "split":
        tasks = p.decode_concurrency or 1  # None = as many as fit; at least one must
        cpus += tasks * p.decode_cpus
        lines.append(f"decode_concurrency x decode_cpus = {tasks} x {p.decode_cpus} CPUs")
    return ResourcePlan(cpus, gpus, p.encode_gpus, lines)


def _missing(rp: ResourcePlan, cluster: dict[str, float], node_gpus: list[float]) -> list[str]:
    out = []
    if rp.gpus > 0 and cluster.get("GPU", 0) < rp.gpus:
        out.append(f"{rp.gpus:g} GPUs but the Ray cluster has {cluster.get('GPU', 0):g}")
    if rp.per_actor_gpus > 0 and node_gpus and max(node_gpus) < rp.per_actor_gpus:
        out.append(
            f"{rp.per_actor_gpus:g} GPUs on one node per encode actor but the largest node has {max(node_gpus):g}"
        )
    if rp.cpus > cluster.get("CPU", 0):
        out.append(f"{rp.cpus:g} CPUs but the Ray cluster has {cluster.get('CPU', 0):g}")
    return out


def check_resources(cfg: Config, cluster: dict[str, float], node_gpus: list[float] | None = None) -> None:
    """Refuse resource requests the cluster can never grant (Ray would wait forever)."""
    p = cfg.preprocess
    rp = plan(p)
    missing = _missing(rp, cluster, node_gpus or [])
    if missing:
        if p.encode_gpus > 0 and cluster.get("GPU", 0) < rp.gpus:
            missing[0] = f"encode_gpus={p.encode_gpus} x encode_actors={p.encode_actors} = {missing[0]}"
        raise ValueError(
            f"the preprocess stages need {'; '.join(missing)} ({'; '.join(rp.lines)}): lower them, or give the cluster "
            f"more nodes (on an autoscaling cluster set preprocess.resource_wait_s to wait for them); "
            f"the stages would otherwise wait on each other forever"
            + (
                f" [total exceeds the cluster's {cluster.get('CPU', 0)} CPUs]"
                if rp.cpus > cluster.get("CPU", 0)
                else ""
            )
        )


def _node_gpus() -> list[float]:
    import ray

    return [float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


def wait_for_resources(p: PreprocessConfig, poll_s: float = 5.0) -> None:
    """Check the plan against the live cluster; wait up to `resource_wait_s` for nodes to join."""
    import ray

    cfg = Config(preprocess=p)
    deadline = time.time() + max(0.0, p.resource_wait_s)
    while True:
        try:
            check_resources(cfg, ray.cluster_resources(), _node_gpus())
            return
        except ValueError as exc:
            if time.time() >= deadline:
                if p.resource_wait_s > 0:
                    raise ValueError(f"waited preprocess.resource_wait_s={p.resource_wait_s:g} s: {exc}") from exc
                raise
            log.warning("waiting for cluster resources (%.0f s left): %s", deadline - time.time(), exc)
            time.sleep(min(poll_s, max(0.1, deadline - time.time())))


def _probe(paths: dict[str, str]) -> tuple[str, list[str]]:
    import os
    import socket

    return socket.gethostname(), [f"{key}={path}" for key, path in paths.items() if path and not os.path.exists(path)]


def preflight(p: PreprocessConfig, timeout_s: float = 120.0) -> None:
    """ValueError naming every node that cannot see input_dir / output_dir / autoencoder_path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = {
        "preprocess.input_dir": p.input_dir,
        "preprocess.output_dir": p.output_dir,
        "preprocess.autoencoder_path": p.autoencoder_path,
    }
    probe = ray.remote(num_cpus=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths)
        for n in nodes
    ]
    problems = []
    for node, ref in zip(nodes, refs):
        host, missing = ray.get(ref, timeout=timeout_s)
        if missing:
            problems.append(f"node {node.get('NodeManagerAddress')} ({host}) lacks {', '.join(missing)}")
    if problems:
        raise ValueError("preflight: every node must see the same paths (a shared filesystem): " + "; ".join(problems))
