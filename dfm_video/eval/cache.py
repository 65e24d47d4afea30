"""Cached statistics of the real set: mean, covariance and count per metric, with the settings
that produced them (input, draw, clip cutting, network weights' sha256, preprocessing).

A later evaluation reuses a metric's statistics only when every setting matches, and otherwise
stops naming the difference: a cache computed differently would silently change the number.
Metrics not in the file yet are computed and added.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

FORMAT = 1
#: Per-metric settings that do not change the features (where a file lives, not what it holds).
IGNORED = ("weights",)


def _diff(prefix: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new), key=str)
    return [
        f"{prefix}{k}: cached {old.get(k)!r}, this run {new.get(k)!r}"
        for k in keys
        if k not in IGNORED and old.get(k) != new.get(k)
    ]


def load(
    path: str | Path, common: dict[str, Any], wanted: dict[str, dict[str, Any]]
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """{metric: (mu, sigma, count)} of the `wanted` metrics cached in `path` (none if the file is absent).

    Raises:
        ValueError: the file was made with other settings (each difference named).
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"--real-stats {path}: not a statistics file ({exc})") from exc
    diff = _diff("", meta.get("common", {}), common)
    for name, settings in wanted.items():
        if name in meta.get("metrics", {}):
            diff += _diff(f"{name}.", meta["metrics"][name]["settings"], settings)
    if diff:
        raise ValueError(
            f"--real-stats {path} was computed with other settings ({'; '.join(diff)}); "
            "pass another --real-stats file, or delete this one to recompute it"
        )
    return {
        name: (arrays[f"{name}.mu"], arrays[f"{name}.sigma"], int(meta["metrics"][name]["count"]))
        for name in wanted
        if name in meta.get("metrics", {})
    }


def save(
    path: str | Path,
    common: dict[str, Any],
    stats: dict[str, tuple[np.ndarray, np.ndarray, int]],
    settings: dict[str, dict[str, Any]],
    previous: Optional[dict] = None,
) -> Path:
    """Write (atomically) the statistics of `stats`, keeping metrics of an existing file with the
    same common settings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT, "common": common, "metrics": {}}
    arrays: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            meta["metrics"] = json.loads(str(z["meta"]))["metrics"]
            arrays = {k: z[k] for k in z.files if k != "meta"}
    for name, (mu, sigma, n) in stats.items():
        arrays[f"{name}.mu"], arrays[f"{name}.sigma"] = mu, sigma
        meta["metrics"][name] = {"settings": settings[name], "count": int(n)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path
