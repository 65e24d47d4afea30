"""Exports survive crashes (dfm_video/train/export.py): a process SIGKILLed between the two renames,
and a stale temp folder of a killed export, never leave the export unusable or block the next one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dfm_video import faults
from dfm_video.config import load_config
from dfm_video.train.export import export_weights

ROOT = Path(__file__).resolve().parents[1]
EXPORT = (
    "import sys, torch; from dfm_video.config import load_config; from dfm_video.train.export import export_weights; "
    "export_weights({'w': torch.full((2,), float(sys.argv[2]))}, load_config(None), {'labels': []}, sys.argv[1], "
    "int(sys.argv[2]))"
)


def _export(out: Path, step: int, **fault) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **faults.env(**fault)}
    return subprocess.run([sys.executable, "-c", EXPORT, str(out), str(step)], env=env).returncode


def test_an_export_killed_between_its_renames_heals_and_later_exports_succeed(tmp_path):
    out = tmp_path / "export"
    assert _export(out, 1) == 0
    assert _export(out, 2, export__crash_between_renames=True) == -9  # SIGKILLed mid-swap
    assert not out.exists() and (tmp_path / "export.old").is_dir()
    for step in (3, 4):  # every later export succeeds; none leaves a .old or .tmp behind
        assert _export(out, step) == 0
        assert load_file(str(out / "model.safetensors"))["w"][0].item() == step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_stale_temp_folder_is_not_reused(tmp_path):
    out = tmp_path / "export"
    stale = tmp_path / "export.tmp"
    (stale / "autoencoder").mkdir(parents=True)
    (stale / "autoencoder" / "config.json").write_text("{}")  # a killed export's leftover
    export_weights({"w": torch.zeros(2)}, load_config(None), {"labels": []}, out, 1)
    assert not (out / "autoencoder").exists() and not stale.exists()
