"""Fault injection for tests: the one place product code asks "should this fail here, now?".

Crash, hang and corruption paths (a SIGKILL during a save, a NaN loss, a decoder that segfaults)
cannot be produced on demand by real inputs, so tests switch faults on here and the real recovery
code handles them. Nothing else in the product reads test-only settings: no hidden CLI flags, no
`fail_*` parameters, no other environment variables.

Faults travel in one environment variable, `DFM_FAULTS`, holding a JSON object, because they must
reach every process a job spawns (launcher ranks, Ray workers, decoder children) unchanged:

    DFM_FAULTS='{"train.nan_loss": {"at_step": 3, "times": 2}, "checkpoint.save_pause": {"step": 4, "seconds": 30}}'

Each fault's name and value are documented where it is read (search for `faults.get("NAME")`).
Production never sets the variable; an unknown name is ignored only by code that does not ask.
"""

from __future__ import annotations

import json
import os
from typing import Any

ENV = "DFM_FAULTS"


def _table() -> dict[str, Any]:
    raw = os.environ.get(ENV, "")
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV} must be a JSON object of fault settings, got {raw!r}: {e}") from e
    if not isinstance(table, dict):
        raise ValueError(f"{ENV} must be a JSON object of fault settings, got {raw!r}")
    return table


def get(name: str, default: Any = None) -> Any:
    """The setting of fault `name`, or `default` when it is not switched on."""
    return _table().get(name, default)


def env(**faults: Any) -> dict[str, str]:
    """`{DFM_FAULTS: json}` for a child process's environment; keys use '__' for '.' (train__nan_loss)."""
    return {ENV: json.dumps({k.replace("__", "."): v for k, v in faults.items()})}
