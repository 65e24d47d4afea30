"""AdamW parameter groups: weight decay only on matmul weights (DiT practice).

Decayed: the `weight` of every nn.Linear and nn.Conv*d. Not decayed: biases, normalisation gains
(LayerNorm/RMSNorm affine, the QK-norm gains, which are bare parameters of the attention module),
embedding tables (class, stage) and anything else that is not a matmul weight. The rule is an
allow-list on purpose: a new kind of parameter is left undecayed rather than silently shrunk.
"""

from __future__ import annotations

from typing import Any

from torch import nn

_MATMUL = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters (decayed, not decayed), in `named_parameters` order."""
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = (mod, p_name)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mod, p_name = owner[name]
        (decay if isinstance(mod, _MATMUL) and p_name == "weight" else no_decay).append(name)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matmul weights with `weight_decay`, everything else with 0."""
    decay, no_decay = decay_split(model)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in decay], "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": [params[n] for n in no_decay], "weight_decay": 0.0})
    return groups
