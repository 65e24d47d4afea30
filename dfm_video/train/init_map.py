"""Mapping a pretrained state dict onto a DiT3D before step 0 (pure tensor code, no I/O).

Three steps: (1) a key map renames a foreign layout's tensors to ours (`KeyRule`: regex pattern ->
our name, optional reshape); (2) `map_state` places the source's tensors on the model's; (3) the
result is a full state dict for `load_state_dict` plus an `InitSummary` saying what happened to
every tensor.

Placement (DFM_METHOD.md section 6b). Same number of stages (flow matching -> flow matching, DFM ->
DFM): every tensor by name. A one-stage (flow-matching) source into an S-stage model: the DiT core
(blocks, class table) is copied; the coarse stage's patch embedder, timestep embedder and head copy
the source's single ones; the finer stages' patch embedders, heads and timestep embedders' output
layers, and the stage embedding (new), are zero-initialised (a timestep MLP's first layer keeps its
fresh init: were both layers zero, no gradient would ever reach the MLP's weights). A zero timestep
embedder output adds exactly 0 to the conditioning and a zero patch embedder exactly 0 to the
tokens, so the model reproduces the pretrained model on the coarse stage bit for bit
(tests/test_init_from_model.py).

Strict (the default): every model tensor must come from the source (or be one of the zeroed ones
above) with the same shape, and every source tensor must be used; anything else is a ValueError
naming the tensor and both shapes. Not strict: a tensor whose shape differs or that the source
lacks keeps the model's fresh initialisation ("newly initialised": e.g. another class count
re-initialises the class table), and source tensors the model lacks are ignored. The transformer
blocks must load in full either way: without them there is nothing to fine-tune.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

PER_STAGE = ("patch_embed", "t_embedders", "final_layers")  # ModuleLists indexed by stage
_STAGE_KEY = re.compile(r"^(patch_embed|t_embedders|final_layers)\.(\d+)\.(.+)$")
CORE_PREFIX = "blocks."


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One key-map rule: source keys matching `pattern` (a full-match regex) are renamed to
    `re.sub(pattern, name, key)`; `reshape` (optional) gives the tensor's new shape, -1 allowed."""

    pattern: str
    name: str
    reshape: Optional[tuple[int, ...]] = None


def load_key_map(path: str | Path) -> list[KeyRule]:
    """Rules from a JSON file: a list of [pattern, name] or [pattern, name, [shape...]] entries.

    Example (a DiT whose patch embedder is a Conv3d `x_embedder.proj` and whose head is `final_layer`):
        [["x_embedder\\\\.proj\\\\.weight", "patch_embed.0.weight", [1152, -1]],
         ["x_embedder\\\\.proj\\\\.bias", "patch_embed.0.bias"],
         ["final_layer\\\\.(.*)", "final_layers.0.\\\\1"],
         ["t_embedder\\\\.(.*)", "t_embedders.0.\\\\1"]]
    Keys no rule matches keep their name. ValueError naming the file and entry otherwise.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"train.init_key_map={path}: cannot read a JSON list of rules ({exc})") from exc
    if not isinstance(entries, list):
        raise ValueError(f"train.init_key_map={path}: expected a JSON list of [pattern, name(, shape)] rules")
    rules = []
    for i, e in enumerate(entries):
        ok = isinstance(e, list) and len(e) in (2, 3) and all(isinstance(v, str) for v in e[:2])
        if ok and len(e) == 3:
            ok = isinstance(e[2], list) and all(isinstance(v, int) for v in e[2])
        if not ok:
            raise ValueError(
                f"train.init_key_map={path}: entry {i} must be [pattern, name] or [pattern, name, [shape]]"
            )
        try:
            re.compile(e[0])
        except re.error as exc:
            raise ValueError(f"train.init_key_map={path}: entry {i}: bad pattern {e[0]!r} ({exc})") from exc
        rules.append(KeyRule(e[0], e[1], tuple(e[2]) if len(e) == 3 else None))
    return rules


def apply_key_map(state: Mapping[str, Tensor], rules: Sequence[KeyRule], source: str) -> dict[str, Tensor]:
    """Rename (and reshape) the source's tensors by the first matching rule; ValueError naming the
    tensor on a bad reshape or when two source tensors land on one name."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new, tensor = key, value
        for rule in rules:
            if re.fullmatch(rule.pattern, key):
                new = re.sub(rule.pattern, rule.name, key)
                if rule.reshape is not None:
                    try:
                        tensor = value.reshape(rule.reshape)
                    except RuntimeError as exc:
                        raise ValueError(
                            f"{source}: key map rule {rule.pattern!r} cannot reshape '{key}' {tuple(value.shape)} "
                            f"to {list(rule.reshape)}"
                        ) from exc
                break
        if new in out:
            raise ValueError(f"{source}: key map sends two tensors to '{new}' (one is '{key}')")
        out[new] = tensor
    return out


def source_stages(state: Mapping[str, Tensor]) -> int:
    """Stages of a state dict in our layout: how many patch embedders it holds."""
    return len({m.group(2) for k in state if (m := _STAGE_KEY.match(k)) and m.group(1) == "patch_embed"})


@dataclasses.dataclass
class InitSummary:
    """What a load did with every tensor: names by outcome, and the source."""

    source: str
    source_stages: int
    target_stages: int
    copied: list[str] = dataclasses.field(default_factory=list)
    zeroed: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # parameters per name (model's or source's)

    def as_dict(self) -> dict:
        """JSON-able: per outcome the names, their count and their parameter total."""
        out: dict = {"source": self.source, "source_stages": self.source_stages, "target_stages": self.target_stages}
        for kind in ("copied", "zeroed", "new", "ignored"):
            names = getattr(self, kind)
            out[kind] = {"tensors": len(names), "parameters": sum(self.sizes[n] for n in names), "names": names}
        return out

    def lines(self) -> list[str]:
        """The printed summary: one line per outcome with counts and parameter totals."""
        d = self.as_dict()
        head = f"init_from {self.source} ({self.source_stages} -> {self.target_stages} stages):"
        labels = {"copied": "copied", "zeroed": "zero-initialised", "new": "newly initialised", "ignored": "ignored"}
        return [head] + [
            f"  {labels[k]:<18} {d[k]['tensors']:>5} tensors {d[k]['parameters']:>14,} parameters" for k in labels
        ]


def _placement(key: str, S_src: int, S: int) -> tuple[str, Optional[str]]:
    """("copy", source name), ("zero", None) or ("new", None) for a model tensor under the recipe."""
    if key.startswith("stage_embedder.") and S_src == 1 and S > 1:
        return "zero", None
    m = _STAGE_KEY.match(key)
    if m is None or S_src == S:
        return "copy", key
    kind, stage, rest = m.group(1), int(m.group(2)), m.group(3)
    if stage == 0:
        return "copy", f"{kind}.0.{rest}"
    if kind == "t_embedders" and rest.startswith("mlp.0."):
        # Only the timestep MLP's output layer is zeroed: the embedder still adds exactly 0, and its
        # first layer keeps its fresh init so gradients reach it (an all-zero MLP would stay a constant).
        return "new", None
    return "zero", None


def _depth(state: Mapping[str, Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(CORE_PREFIX)})


def map_state(
    model_state: Mapping[str, Tensor],
    source_state: Mapping[str, Tensor],
    source: str,
    strict: bool = True,
    source_stages_hint: Optional[int] = None,
) -> tuple[dict[str, Tensor], InitSummary]:
    """The state dict to load into a model whose state_dict() is `model_state`, and what happened.

    `source_state` is in our layout (after `apply_key_map`). Tensors are cast to the model's dtypes.
    ValueError naming `source`, the tensor and both shapes for every refused case (see module doc).
    """
    S = source_stages(model_state)
    S_src = source_stages_hint or source_stages(source_state)
    if S_src == 0:
        raise ValueError(
            f"{source}: no 'patch_embed.<stage>.weight' among the source's tensors ({sorted(source_state)[:6]} ...): "
            "not our layout; rename its tensors with a key map (train.init_key_map)"
        )
    if S_src != S and S_src != 1:
        raise ValueError(
            f"{source}: a {S_src}-stage model cannot initialise a {S}-stage one; the source must have {S} stages "
            "(same layout) or 1 (flow matching: the coarse stage copies it)"
        )
    summary = InitSummary(source, S_src, S)
    problems: list[str] = []
    depth, src_depth = _depth(model_state), _depth(source_state)
    if depth != src_depth:
        problems.append(f"the source has {src_depth} transformer blocks, the model {depth} (model.depth)")
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, target in model_state.items():
        kind, src_key = _placement(key, S_src, S)
        if kind == "zero":
            out[key] = torch.zeros_like(target)
            summary.zeroed.append(key)
            continue
        if kind == "new":
            out[key] = target.detach().clone()
            summary.new.append(key)
            continue
        value = source_state.get(src_key)
        if value is not None:
            used.add(src_key)
        if value is not None and tuple(value.shape) == tuple(target.shape):
            out[key] = value.detach().to(dtype=target.dtype, device=target.device).clone()
            summary.copied.append(key)
            continue
        if value is None:
            why = f"'{key}' {tuple(target.shape)}: the source has no '{src_key}'"
        else:
            why = f"'{key}': the source's '{src_key}' has shape {tuple(value.shape)}, the model {tuple(target.shape)}"
        if strict or key.startswith(CORE_PREFIX):
            problems.append(why)
        else:
            out[key] = target.detach().clone()
            summary.new.append(key)
    unused = sorted(set(source_state) - used)
    if unused and strict:
        problems.append(f"source tensors the model has no place for: {unused[:8]}{' ...' if len(unused) > 8 else ''}")
    if problems:
        hint = "" if strict else " (the transformer blocks must always load)"
        raise ValueError(
            f"{source}: cannot initialise the model{hint}: "
            + "; ".join(problems[:6])
            + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")
            + (
                ""
                if not strict
                else ". Fix the config or key map, or allow a partial load: --set train.init_strict=false"
            )
        )
    summary.ignored = unused
    summary.sizes = {k: math.prod(v.shape) for k, v in source_state.items()}
    summary.sizes.update({k: math.prod(v.shape) for k, v in model_state.items()})
    return out, summary
