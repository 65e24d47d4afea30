"""The output folder of a sampling run: one file per global index, written atomically, and the
record (`sampling.json`) of the settings its files were made with.

A rerun into the same folder skips the indices whose file exists and refuses, naming the
difference, when the folder was made from another checkpoint or with other settings: mixing two
runs' samples would silently change what an evaluation measures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dfm_video.media import write_mp4, write_png

RECORD = "sampling.json"
REPORT = "samples.json"
PREFIX = "sample_"
#: Settings that change what a sample index means; the rest of the record is informational (the batch
#: size too: on CPU in fp32 it changes no bit, measured; on GPUs it may change last bits, not the distribution).
COMPARED = (
    "weights_sha256",
    "latent_shape",
    "autoencoder",
    "steps",
    "tau",
    "cfg_scale",
    "cfg_interval",
    "seed",
    "noise",
    "labels",
    "dtype",
)


def label_tag(names: Sequence[str], y: int) -> str:
    return names[y].replace("/", "_").replace(" ", "_") if y < len(names) else "uncond"


def sample_path(out: Path, index: int, names: Sequence[str], y: int, image: bool) -> Path:
    """`sample_000042_<label>.mp4` (`.png` for single-frame models): sortable by global index."""
    return out / f"{PREFIX}{index:06d}_{label_tag(names, y)}{'.png' if image else '.mp4'}"


def write_sample(path: Path, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> mp4, or PNG (`path` ends in .png: T must be 1); both land under their
    final name in one rename."""
    if path.suffix == ".png":
        if frames.shape[0] != 1:
            raise ValueError(f"{path}: a PNG holds one frame, the sample has {frames.shape[0]}")
        return write_png(path, frames[0])
    return write_mp4(path, frames, fps)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: folder has {old.get(k)!r}, this run {new.get(k)!r}" for k in COMPARED if old.get(k) != new.get(k)]


def claim_folder(out: Path, record: dict[str, Any]) -> bool:
    """Create `out` with this run's record, or check an existing record matches it.

    Returns True when the folder already held a record (a resumed run). Every rank may call this:
    they write identical records, each through its own temp file renamed into place.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); move the folder away or pick another --out") from exc
        diff = _differences(old, record)
        if diff:
            raise ValueError(
                f"--out {out} holds samples from another checkpoint or other settings ({'; '.join(diff)}); "
                "use another --out, or the original settings to finish that run"
            )
        return True
    strays = sorted(p.name for p in out.iterdir() if p.name.startswith(PREFIX))
    if strays:
        raise ValueError(
            f"--out {out} holds {len(strays)} sample files ({strays[0]}, ...) but no {RECORD}: "
            "their settings are unknown; use an empty folder"
        )
    tmp = out / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return False


def clear_folder(out: Path) -> int:
    """Delete what a sampling run wrote into `out` (samples, previews, record, report); returns the count."""
    out = Path(out)
    if not out.is_dir():
        return 0
    gone = [p for p in out.iterdir() if p.name.startswith(PREFIX) or p.name in (RECORD, REPORT, "contact_sheet.png")]
    gone += [p for p in (out / "previews").glob("stage*")] if (out / "previews").is_dir() else []
    for p in gone:
        p.unlink()
    return len(gone)


def read_record(out: Path) -> dict[str, Any] | None:
    path = Path(out) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None
