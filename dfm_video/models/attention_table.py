"""The measured attention table behind `model.attention: auto`.

`attention_measured.json` (next to this file, committed) holds fwd+bwd TFLOP/s per backend, per GPU
name and head dim, written by `python -m benchmarks.bench_attention --write-table` on that GPU:

    {"devices": {"NVIDIA H200": {"72": {"tokens": 13312, "heads": 16, "dtype": "bf16",
                                        "tflops": {"sdpa": 310.2, "sdpa_cudnn": 355.0, ...}}}}}

`pick_measured` returns the fastest backend among those that run here, or None when the device or
the head dim has no row (the caller then applies its documented rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

TABLE_PATH = Path(__file__).with_name("attention_measured.json")


def load_table(path: Path = TABLE_PATH) -> dict[str, Any]:
    """The table's `devices` mapping; ValueError naming the file when it is malformed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the measured attention table: {e}") from e
    devices = data.get("devices")
    if not isinstance(devices, dict):
        raise ValueError(f"{path}: expected a top-level 'devices' mapping, got {type(devices).__name__}")
    for dev, rows in devices.items():
        for dh, row in rows.items():
            if not dh.isdigit() or not isinstance(row.get("tflops"), dict):
                raise ValueError(f"{path}: devices.{dev}.{dh}: expected a head-dim key with a 'tflops' mapping")
    return devices


def measured_row(device_name: str, head_dim: int, path: Path = TABLE_PATH) -> Optional[dict[str, float]]:
    """{backend: fwd+bwd TFLOP/s} measured on `device_name` at `head_dim`, or None."""
    row = load_table(path).get(device_name, {}).get(str(head_dim))
    return None if row is None else {k: float(v) for k, v in row["tflops"].items()}


def pick_measured(
    device_name: str, head_dim: int, available: list[str], path: Path = TABLE_PATH
) -> Optional[tuple[str, dict[str, float]]]:
    """(fastest measured backend among `available`, the row) or None when nothing measured runs here."""
    row = measured_row(device_name, head_dim, path)
    if not row:
        return None
    runnable = {k: v for k, v in row.items() if k in available}
    if not runnable:
        return None
    return max(runnable, key=runnable.__getitem__), row


def write_row(
    device_name: str, head_dim: int, tflops: dict[str, float], tokens: int, heads: int, dtype: str,
    path: Path = TABLE_PATH,
) -> None:  # fmt: skip
    """Replace the (device, head dim) row with a new measurement (the benchmark's `--write-table`)."""
    data = json.loads(path.read_text()) if path.exists() else {"devices": {}}
    data.setdefault("devices", {}).setdefault(device_name, {})[str(head_dim)] = {
        "tokens": tokens,
        "heads": heads,
        "dtype": dtype,
        "tflops": {k: round(v, 1) for k, v in sorted(tflops.items())},
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
