"""Load, override, validate and serialise `Config`.

Every user error is a `ValueError` that names the source (file or `--set`), the dotted key, what
was expected and what was given. Nothing unknown is ignored: a typo is an error with a suggestion.
PyYAML is imported on first use, so the schema and the model package import on an image without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union, get_args, get_origin

from dfm_video.config.presets import SECTION_PRESETS
from dfm_video.config.schema import Config

# Configs shipped with the repository: `--config k700.yaml` resolves here.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _yaml() -> Any:
    import yaml  # optional third-party dependency, needed only to read and write files and overrides

    return yaml


def resolve_config_path(name: str | Path) -> Path:
    """Return `name` (`~` expanded) if it is an existing file, else the same name under the repo's `configs/`."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"config file not found: '{name}' (looked at it directly and under {CONFIG_DIR})")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None), apply `key=value` overrides, validate."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        data = read_config_file(resolved)
    cfg = config_from_dict(data, source)
    for item in overrides:
        cfg = apply_override(cfg, item)
    validate(cfg, source)
    return cfg


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested dict of one YAML config file, with its `base:` chain merged in.

    `base: k700.yaml` names another config file, relative to the naming file's folder (or absolute);
    the file then states only what differs. Mappings merge key by key; any other value (lists
    included) replaces the base's. Bases may chain; a cycle or a missing base is an error naming the
    file that refers to it.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    yaml = _yaml()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ValueError(f"{chain[-1]}: 'base' forms a cycle: {cycle}")
    try:
        loaded = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
    if "base" not in loaded:
        return loaded
    base = loaded.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: key 'base': expected a config file name, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else resolved.parent / base
    if not base_path.is_file():
        raise ValueError(f"{path}: key 'base': config file not found: '{base}' (looked at {base_path})")
    return _merge(_read_with_bases(base_path, (*chain, resolved)), loaded)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a `Config` from nested dicts; unknown keys and wrong types are `ValueError`s."""
    return _build(Config, data, "", source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dicts/lists (tuples become lists) ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (or JSON when the suffix is .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else _yaml().safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


def apply_override(cfg: Config, item: str) -> Config:
    """Apply one dotted override `section.key=value` (value parsed as YAML) to a copy of `cfg`.

    `section=NAME` applies a named preset instead (`dfm_video.config.presets.SECTION_PRESETS`, e.g.
    `dfm=single_stage`). Setting `dfm.factors` re-derives `dfm.num_stages` unless it was set apart from them."""
    source = f"--set {item}"
    if "=" not in item:
        raise ValueError(f"{source}: expected KEY=VALUE, e.g. optim.lr=2e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    yaml = _yaml()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: value is not valid YAML: {exc}") from exc
    if isinstance(value, str) and key in SECTION_PRESETS:
        presets = SECTION_PRESETS[key]
        if value not in presets:
            raise ValueError(f"{source}: no preset '{value}' for section '{key}' (presets: {', '.join(presets)})")
        return presets[value](cfg)
    data = config_to_dict(cfg)
    if key == "dfm.factors" and cfg.dfm.num_stages == len(cfg.dfm.factors) + 1:
        data["dfm"]["num_stages"] = None  # derived from the new factors
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            _unknown(".".join(parts[: depth + 1]), node if isinstance(node, dict) else {}, source)
        node = node[part]
    if parts[-1] not in node:
        _unknown(key, node, source)
    node[parts[-1]] = value
    return config_from_dict(data, source)


def require(cfg: Config, *keys: str, source: str = "config") -> None:
    """Raise a `ValueError` for each dotted key whose value is empty/None (a command's required inputs)."""
    for key in keys:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is None or value == "":
            raise ValueError(f"{source}: missing required value '{key}' (set it in the file or with --set {key}=...)")


def validate(cfg: Config, source: str = "<config>") -> None:
    """Cross-field checks that types alone cannot express."""

    def fail(key: str, msg: str) -> None:
        raise ValueError(f"{source}: key '{key}': {msg}")

    d = cfg.dfm
    if d.num_stages != len(d.factors) + 1:
        fail(
            "dfm.factors",
            f"{len(d.factors)} factors make {len(d.factors) + 1} stages but dfm.num_stages={d.num_stages} "
            f"(num_stages follows from factors and may be left out; for {d.num_stages} stages give "
            f"{max(d.num_stages - 1, 0)} factors)",
        )
    for i, f in enumerate(d.factors):
        if any(v not in (1, 2) for v in f):
            fail(f"dfm.factors[{i}]", f"each of (ft, fh, fw) must be 1 or 2, got {list(f)}")
    if cfg.preprocess.input_type == "images" and any(f[0] != 1 for f in d.factors):
        fail(
            "dfm.factors",
            f"preprocess.input_type='images' gives T = 1 latents, which have no time axis for the temporal "
            f"factor in {[list(f) for f in d.factors]}; use ft = 1 (e.g. [[1, 2, 2]])",
        )
    if len(d.stage_probs) != d.num_stages:
        fail("dfm.stage_probs", f"expected {d.num_stages} probabilities, got {len(d.stage_probs)}")
    if any(p < 0 for p in d.stage_probs) or not math.isclose(sum(d.stage_probs), 1.0, abs_tol=1e-6):
        fail("dfm.stage_probs", f"expected non-negative values summing to 1, got {d.stage_probs}")
    for key in ("current_scale", "earlier_scale"):
        if getattr(d, key) <= 0:
            fail(f"dfm.{key}", f"expected > 0, got {getattr(d, key)}")
    m = cfg.model
    if any(p < 1 for p in m.patch_size):
        fail("model.patch_size", f"expected positive sizes, got {list(m.patch_size)}")
    if not 0.0 <= m.class_dropout < 1.0:
        fail("model.class_dropout", f"expected a probability in [0, 1), got {m.class_dropout}")
    if m.num_classes < 1:
        fail("model.num_classes", f"expected >= 1, got {m.num_classes}")
    if m.upsample_factors is not None:
        if len(m.upsample_factors) != d.num_stages:
            fail(
                "model.upsample_factors",
                f"expected one (1, fh, fw) per stage ({d.num_stages}), got {m.upsample_factors}",
            )
        for i, u in enumerate(m.upsample_factors):
            if u[0] != 1 or any(v not in (1, 2) for v in u[1:]):
                fail(f"model.upsample_factors[{i}]", f"expected (1, fh, fw) with fh, fw in 1 or 2, got {list(u)}")
    if cfg.train.init_key_map and not cfg.train.init_from:
        fail("train.init_key_map", f"given ({cfg.train.init_key_map!r}) without train.init_from")
    s = cfg.sample
    if len(s.steps) != d.num_stages:
        fail("sample.steps", f"expected one step count per stage ({d.num_stages}), got {s.steps}")
    if any(n < 1 for n in s.steps):
        fail("sample.steps", f"expected positive step counts, got {s.steps}")
    if not 0.0 < s.tau <= 1.0:
        fail("sample.tau", f"expected 0 < tau <= 1, got {s.tau}")
    if s.cfg_interval is not None and not 0.0 <= s.cfg_interval[0] <= s.cfg_interval[1] <= 1.0:
        fail("sample.cfg_interval", f"expected 0 <= a <= b <= 1, got {list(s.cfg_interval)}")
    z = cfg.distributed
    if z.zero_stage not in (1, 2, 3):
        # ZeRO-0 is refused here, before any process group or deletion: with bf16 DeepSpeed 0.19.8 raises
        # inside initialize, and with fp32 its plain optimizer applies non-finite steps instead of skipping them.
        fail(
            "distributed.zero_stage",
            f"expected 1, 2 or 3, got {z.zero_stage} (ZeRO-0 is not supported: bf16 fails in DeepSpeed's "
            "initialize and fp32 applies NaN steps; use 1, which partitions only the optimizer state)",
        )
    if z.micro_batch_size < 1 or z.global_batch_size < 1:
        fail("distributed.micro_batch_size", "batch sizes must be positive")
    if z.sequence_parallel < 1:
        fail("distributed.sequence_parallel", f"expected >= 1, got {z.sequence_parallel}")
    for i, src in enumerate(cfg.data.mix):
        if not src.shards:
            fail(f"data.mix[{i}].shards", "expected a shards directory, got ''")
        if not src.weight > 0:
            fail(f"data.mix[{i}].weight", f"expected > 0, got {src.weight}")
    if cfg.data.mix and cfg.data.shards:
        fail(
            "data.shards",
            f"give data.shards or data.mix, not both (data.shards='{cfg.data.shards}', "
            f"data.mix has {len(cfg.data.mix)} datasets)",
        )
    o = cfg.optim
    if o.lr <= 0:
        fail("optim.lr", f"expected > 0, got {o.lr}")
    if o.warmup_steps < 0:
        fail("optim.warmup_steps", f"expected >= 0, got {o.warmup_steps}")
    t = cfg.train
    if not 0.0 <= t.ema_decay < 1.0:
        fail("train.ema_decay", f"expected 0 <= decay < 1, got {t.ema_decay}")
    for key in ("steps", "log_every", "ckpt_every", "keep_last", "max_nonfinite"):
        if getattr(t, key) < 1:
            fail(f"train.{key}", f"expected >= 1, got {getattr(t, key)}")


# ----------------------------------------------------------------------------- type conversion


def _unknown(key: str, valid: dict[str, Any] | Iterable[str], source: str) -> typing.NoReturn:
    names = sorted(valid)
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"{source}: unknown key '{key}'{hint} (valid keys here: {', '.join(names)})")


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    where = prefix or "<top level>"
    if not isinstance(data, dict):
        raise ValueError(f"{source}: key '{where}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            _unknown(f"{prefix}.{key}" if prefix else str(key), fields, source)
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{source}: missing required key '{key}' (expected {_describe(hints[name])})")
    return cls(**kwargs)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    def bad() -> typing.NoReturn:
        raise ValueError(f"{source}: key '{key}': expected {_describe(tp)}, got {value!r}")

    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ValueError:
                continue
        bad()
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        bad()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            bad()
        return [_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            bad()
        return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept a plain numeric literal.
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)
        bad()
    if tp is str:
        if isinstance(value, str):
            return value
        bad()
    if tp is Any:
        return value
    raise AssertionError(f"unsupported config type {tp!r} for '{key}'")
