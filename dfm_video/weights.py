"""Checking loaded weights against a model before `load_state_dict`, with errors naming the source."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor


def check_state_dict(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str) -> None:
    """ValueError naming `source` when keys or shapes of `state` differ from `expected` (a model's state_dict)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"{source}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}"
            )
