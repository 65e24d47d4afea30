"""Exported weights for the sampler: `model.safetensors` (EMA, float32) + the resolved config +
what the data was encoded with (labels, level statistics, autoencoder, latent shape)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dfm_video.config import Config, load_config, save_config

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
DATASET = "dataset.json"


def export_weights(weights: dict[str, torch.Tensor], cfg: Config, dataset_meta: dict[str, Any], out_dir: Path, step: int) -> Path:
    """Write the export atomically (into a temp folder renamed at the end)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS), metadata={"step": str(step)})
    save_config(cfg, tmp / CONFIG)
    (tmp / DATASET).write_text(json.dumps(dataset_meta, indent=2))
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    return out_dir


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
