"""What may change between a checkpoint and the run that resumes it (pure functions, no process group).

On resume the checkpoint's stored config (meta.json) is compared with the new one, key by key,
each key classified by what it changes, not by its name:
- corrupting changes (the model, the DFM objective, the data and its fingerprint, the global batch,
  the seed) are refused, with every difference listed: the weights, the data position or the
  random stream would no longer mean what they meant;
- harmless ones (logging, checkpoint cadence, micro batch, workers, where the data is mounted:
  `data.shards` and the `shards` of `data.mix` entries, since the fingerprint checks the content)
  are allowed and logged; `train.steps` is harmless under a constant schedule, but under cosine it
  sets the decay span (a finished run extended from its floor jumps back up), so it is deliberate there;
- deliberate ones (learning rate and its schedule, clipping, EMA decay, precision) need
  `--allow-change KEY` (or a prefix such as `optim`) and then take effect (`apply_optim_changes`);
- anything else is refused as a corrupting change unless allowed explicitly, so a new config field
  is never silently ignored.
The checkpoint manager (checkpoint.py) calls `compare_configs` when it plans a resume.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

CORRUPTING = (
    "model.",
    "dfm.",
    "data.mix",
    "data.shuffle",
    "data.fingerprint",
    "distributed.global_batch_size",
    "train.seed",
)
HARMLESS = (
    "name",
    "data.shards",  # a path: the data fingerprint compares the content, wherever it is mounted
    "train.log_every",
    "train.ckpt_every",
    "train.ckpt_every_minutes",
    "train.keep_last",
    "train.tensorboard",
    "train.output_dir",
    "train.max_nonfinite",
    "train.peak_tflops",
    "train.measured_peak_tflops",
    "data.num_workers",
    "distributed.micro_batch_size",
    "distributed.backend",
    "distributed.offload_optimizer",
    "distributed.deepspeed_overrides",
    "sample.",
    # the same math on another layout (tests/test_sequence_parallel.py: equal losses and gradients)
    "distributed.sequence_parallel",
    "train.progress",
    "train.sample_every",
    "train.sample_count",
    "train.wandb",
    "train.wandb_project",
    "train.wandb_mode",
    "preprocess.",  # read by data_pipeline only; the shards themselves are fingerprinted
    # act at step 0 only; a resume ignores them
    "train.init_from",
    "train.init_strict",
    "train.init_key_map",
)
DELIBERATE = (
    "optim.lr",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.min_lr_ratio",
    "optim.grad_clip",
    "train.ema_decay",
    "distributed.precision",
)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _without_sources(meta: Any) -> Any:
    if isinstance(meta, dict):
        return {k: _without_sources(v) for k, v in meta.items() if k != "source"}
    if isinstance(meta, list):
        return [_without_sources(v) for v in meta]
    return meta


def data_fingerprint(dataset_meta: dict, num_samples: int) -> str:
    """What the data position means: sample count, labels, latent shape, statistics; no path, not
    even a mix's per-bucket ones (a run may move to where the data is mounted elsewhere)."""
    blob = json.dumps({"num_samples": num_samples, "meta": _without_sources(dataset_meta)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def legacy_data_fingerprint(dataset_meta: dict, num_samples: int) -> str:
    """The fingerprint of checkpoints whose mix kept its bucket paths inside (only the top-level path dropped)."""
    keyed = {k: v for k, v in dataset_meta.items() if k != "source"}
    blob = json.dumps({"num_samples": num_samples, "meta": keyed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stored_fingerprint(meta: dict, num_samples: int) -> str:
    """A checkpoint's data fingerprint in today's terms: one written with bucket paths inside is
    recomputed from its stored dataset meta (when that meta is the one it was made from)."""
    stored = meta.get("data_fingerprint", "<absent>")
    old_meta = meta.get("dataset_meta")
    if isinstance(old_meta, dict) and stored == legacy_data_fingerprint(old_meta, num_samples):
        return data_fingerprint(old_meta, num_samples)
    return stored


def with_fingerprint(cfg_dict: dict, fingerprint: str) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    out.setdefault("data", {})["fingerprint"] = fingerprint
    return out


# Keys under a corrupting section that change how the same math runs, not the math: checked first.
# Activation checkpointing gives bit-identical gradients (tests/test_model.py); fused AdamW differs
# from the loop by float rounding only.
SAME_MATH = (
    "model.activation_checkpointing",
    "optim.fused",
)


def _mix_without_paths(mix: Any) -> Any:
    if not isinstance(mix, list):
        return mix
    return [{k: v for k, v in m.items() if k != "shards"} if isinstance(m, dict) else m for m in mix]


def classify(key: str, old: dict | None = None, new: dict | None = None) -> str:
    """The class of a change of `key` between the flat configs `old` and `new` (by its effect)."""
    old, new = old or {}, new or {}
    if _matches(key, SAME_MATH):
        return "harmless"
    if key == "train.steps":
        cosine = "cosine" in (old.get("optim.schedule"), new.get("optim.schedule"))
        return "deliberate" if cosine else "harmless"
    if key == "data.mix" and _mix_without_paths(old.get(key)) == _mix_without_paths(new.get(key)):
        return "harmless"  # only the buckets' paths moved
    if _matches(key, CORRUPTING):
        return "corrupting"
    if _matches(key, HARMLESS):
        return "harmless"
    if _matches(key, DELIBERATE):
        return "deliberate"
    return "unknown"


def compare_configs(old: dict, new: dict, allow: Iterable[str] = (), source: str = "the checkpoint") -> list[str]:
    """Differences between a stored and a new config (plain dicts, plus `data.fingerprint`).

    Returns a line per allowed change (harmless, or deliberate and named in `allow`); raises
    ValueError listing every refused one.
    """
    allow = [a.rstrip(".") for a in allow]
    a, b = flatten(old), flatten(new)
    refused, accepted = [], []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va == vb:
            continue
        kind = classify(key, a, b)
        line = f"{key}: {va!r} -> {vb!r}"
        if key == "train.steps" and kind == "deliberate":
            line += " (sets the cosine decay span: the LR follows the new span from this step on)"
        explicitly = any(key == x or key.startswith(x + ".") for x in allow)
        if kind == "harmless":
            accepted.append(f"{line} (harmless)")
        elif explicitly and kind != "corrupting":
            accepted.append(f"{line} (allowed by --allow-change)")
        elif kind == "deliberate":
            refused.append(f"{line} (deliberate: pass --allow-change {key} to apply it)")
        elif kind == "unknown":
            refused.append(f"{line} (not known to be safe: pass --allow-change {key} if it is)")
        else:
            refused.append(
                f"{line} (would corrupt the run: the weights, data position or random stream no longer match)"
            )
    if refused:
        raise ValueError(f"the config differs from {source}:\n  " + "\n  ".join(refused))
    return accepted


def apply_optim_changes(optimizer: Any, scheduler: Any, lr: float) -> None:
    """Make the configured base LR win over the one the checkpoint restored (the schedule function
    itself is rebuilt from the new config). Recomputes lr = base * multiplier(step) exactly as
    LambdaLR does, so with an unchanged config it is a no-op."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    lrs = [base * lmbda(scheduler.last_epoch) for base, lmbda in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, value in zip(optimizer.param_groups, lrs):
        group["initial_lr"] = lr
        group["lr"] = value
    scheduler._last_lr = lrs
