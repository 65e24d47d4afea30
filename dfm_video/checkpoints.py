"""Reading checkpoints and exports: the one module training and sampling both use.

Layout of a run directory: `<run>/checkpoints/step_XXXXXXXX/` (a complete checkpoint has a
`COMPLETE` marker, whole-tensor EMA weights in `ema.safetensors` and `meta.json`) and
`<run>/checkpoints/latest` naming the newest one; `<run>/export/` holds the sampler's export
(`model.safetensors` + `config.yaml` + `dataset.json`). Writing lives in `dfm_video/train`;
everything here only reads, never unpickles, and needs neither DeepSpeed nor a process group.
`resolve_weights_source` and `read_weights` turn any path the sampler accepts (a run directory, an
export, a checkpoint folder) into weights, config and dataset meta.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dfm_video.config import Config, config_from_dict, load_config, validate

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
DATASET = "dataset.json"
AUTOENCODER = "autoencoder"
_TAG_RE = re.compile(r"^step_(\d{8})$")
META = "meta.json"
EMA_FILE = "ema.safetensors"
COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = _TAG_RE.match(tag)
    if not m:
        raise ValueError(f"{tag!r} is not a checkpoint tag (step_XXXXXXXX)")
    return int(m.group(1))


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / COMPLETE).is_file()


def complete_tags(root: Path) -> list[str]:
    """Complete checkpoint tags under root, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _TAG_RE.match(p.name) and is_complete(p))


def latest_tag(root: Path) -> Optional[str]:
    """The tag named by `root/latest` (None for a run without checkpoints); ValueError if it is unusable.

    Never falls back to "the highest step on disk": after a rollback that may be another run's.
    """
    root = Path(root)
    pointer = root / "latest"
    if not pointer.is_file():
        found = complete_tags(root)
        if found:
            raise ValueError(
                f"{root} holds checkpoints ({', '.join(found)}) but no 'latest' pointer: "
                f"resume from one explicitly with --resume {root / found[-1]}"
            )
        return None
    tag = pointer.read_text().strip()
    if not _TAG_RE.match(tag):
        raise ValueError(f"{pointer} names {tag!r}, not a checkpoint tag")
    if not is_complete(root / tag):
        raise ValueError(f"{pointer} names {tag}, but {root / tag} is missing or has no {COMPLETE} marker")
    return tag


def read_meta(path: Path) -> dict:
    """meta.json of a complete checkpoint folder; ValueError naming the folder if anything is off."""
    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"checkpoint {path} is incomplete or missing (no {COMPLETE} marker)")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"checkpoint {path}: cannot read {META} ({exc}); was it written by this version of dfm-video?"
        ) from exc
    for key in ("step", "samples_consumed", "world_size", "zero_stage", "config", "dataset_meta"):
        if key not in meta:
            raise ValueError(f"checkpoint {path}: {META} lacks {key!r}")
    return meta


def read_ema(path: Path) -> dict:
    """The whole-tensor EMA of a checkpoint folder (safetensors: no unpickling); ValueError if missing or truncated."""
    f = Path(path) / EMA_FILE
    if not f.is_file():
        raise ValueError(f"checkpoint {path} has no {EMA_FILE}")
    try:
        with safe_open(str(f), framework="pt", device="cpu") as h:
            return {k: h.get_tensor(k) for k in h.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated headers / data
        raise ValueError(f"checkpoint {path}: cannot read {EMA_FILE} ({exc})") from exc


def read_checkpoint_weights(path: Path) -> tuple[dict, dict, dict, bool]:
    """EMA weights of a checkpoint folder, without DeepSpeed, a process group or unpickling.

    Returns (whole float32 weights by name, config dict, dataset meta, partitioned=False).
    """
    meta = read_meta(path)
    return read_ema(path), meta["config"], meta["dataset_meta"], False


def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """Read an export folder; clear errors for a missing or corrupt one."""
    path = Path(path)
    for name in (WEIGHTS, CONFIG, DATASET):
        if not (path / name).is_file():
            raise ValueError(f"{path} is not an export folder: {name} is missing")
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path / WEIGHTS} is corrupt or truncated: {exc}") from exc
    try:
        meta = json.loads((path / DATASET).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / DATASET} is not valid JSON: {exc}") from exc
    return weights, load_config(path / CONFIG), meta


def load_file_metadata(src: Path) -> dict[str, str]:
    """The safetensors header metadata of an export (the training step), {} for a checkpoint folder."""
    path = Path(src) / WEIGHTS
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def weights_step(src: Path) -> int:
    """The training step of an export (its safetensors metadata) or a complete checkpoint folder."""
    src = Path(src)
    if (src / WEIGHTS).is_file():
        return int(load_file_metadata(src).get("step", 0))
    return int(read_meta(src)["step"])


def resolve_weights_source(path: str | Path) -> Path:
    """The folder whose weights a path means: an export or complete checkpoint folder itself; for a
    run directory the newest of its export and its latest checkpoint (by training step; the export
    on a tie, as it holds the same EMA weights); a checkpoints root's latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--checkpoint {path}: no such file or directory")
    if (path / WEIGHTS).is_file() or (path / COMPLETE).is_file():
        return path
    candidates = []
    if (path / "export" / WEIGHTS).is_file():
        candidates.append(path / "export")
    for root in (path / "checkpoints", path):
        tag = latest_tag(root)
        if tag is not None:
            candidates.append(root / tag)
            break
    if candidates:
        return max(candidates, key=lambda c: (weights_step(c), (c / WEIGHTS).is_file()))
    raise ValueError(
        f"--checkpoint {path}: not an export folder ({WEIGHTS}), a complete checkpoint folder ({COMPLETE}) "
        "or a run directory holding either"
    )


def read_weights(src: Path) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any], bool]:
    """Weights, validated config and dataset meta of an export or a complete checkpoint folder
    (`resolve_weights_source` finds one); the flag is True when the weights are flat ZeRO-3
    partitions that the caller must cut to the model's shapes."""
    src = Path(src)
    if (src / WEIGHTS).is_file():
        weights, cfg, meta = load_export(src)
        return weights, cfg, meta, False
    weights, cfg_dict, meta, partitioned = read_checkpoint_weights(src)
    cfg = config_from_dict(cfg_dict, str(src))
    validate(cfg, str(src))
    return weights, cfg, meta, partitioned
