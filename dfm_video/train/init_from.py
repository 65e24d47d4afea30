"""`train.init_from`: a new run's weights from a pretrained model (fine-tuning), read and checked
before any process group, loaded into the model before DeepSpeed wraps it.

Sources (`read_init_source`), every one read whole on every rank (no collective needed):
- an export folder (`model.safetensors`): its EMA weights and config;
- a checkpoint folder of ours (`COMPLETE`, `ema.safetensors`): its EMA weights and config;
- a run directory: its latest checkpoint, else its export;
- a DeepSpeed checkpoint of another trainer, any world size: a ZeRO-2/3 tag folder (`*model_states.pt`,
  `*optim_states.pt`) or a folder whose `latest` names one (fp32 master weights rebuilt by
  `deepspeed.utils.zero_to_fp32`), or a universal checkpoint (`zero/<name>/fp32.pt`). These unpickle:
  trusted folders only.
A folder with our `meta.json` but no `COMPLETE` (a half-written save) is refused.

Then `train.init_key_map` renames foreign keys, `init_map.map_state` places the tensors (a one-stage
source into an S-stage model: DFM_METHOD.md 6b) and checks every shape against the model (built on
the meta device: no memory). `InitFrom.apply` loads the result into the real model and writes
`init_from.json` (rank 0) in the run directory. Optimizer, LR schedule, step and data order start
fresh; the EMA is built from the model afterwards, so it starts from the loaded weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dfm_video.checkpoints import COMPLETE, META, WEIGHTS, latest_tag, load_export, read_checkpoint_weights
from dfm_video.config import Config
from dfm_video.models import DiT3D
from dfm_video.train.init_map import InitSummary, apply_key_map, load_key_map, map_state

log = logging.getLogger(__name__)
SUMMARY_FILE = "init_from.json"


def _is_deepspeed_tag(path: Path) -> bool:
    return any(path.glob("*model_states.pt"))


def _read_universal(path: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted((path / "zero").glob("*/fp32.pt")):
        try:
            entry = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a truncated or foreign file
            raise ValueError(f"train.init_from={path}: cannot read {f} ({exc})") from exc
        state[f.parent.name] = entry["param"]
    if not state:
        raise ValueError(f"train.init_from={path}: a universal checkpoint folder without zero/<name>/fp32.pt files")
    return state


def _read_deepspeed(path: Path, tag: Optional[str]) -> dict[str, torch.Tensor]:
    import deepspeed.utils.zero_to_fp32 as z  # heavy, optional until a DeepSpeed source is read

    try:
        return dict(z.get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag))
    except Exception as exc:  # DeepSpeed raises ValueError/FileNotFoundError/KeyError for broken folders
        where = path / tag if tag else path
        raise ValueError(f"train.init_from={where}: not a readable DeepSpeed ZeRO checkpoint ({exc})") from exc


def read_init_source(path: str | Path) -> tuple[Path, dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    """(the folder read, whole weights by name, the source's config dict or None) for any source above;
    ValueError naming the path for a missing, half-written or unknown one."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"train.init_from={path}: no such file or directory")
    if not path.is_dir():
        raise ValueError(f"train.init_from={path}: expected a folder (export, run, or checkpoint), got a file")
    if (path / WEIGHTS).is_file():
        weights, cfg, _ = load_export(path)
        return path, weights, dataclasses.asdict(cfg)
    if (path / META).exists() or (path / COMPLETE).exists() or path.name.endswith(".partial"):
        weights, cfg_dict, _, _ = read_checkpoint_weights(path)  # refuses a folder without COMPLETE
        return path, weights, cfg_dict
    if (path / "checkpoints").is_dir() or (path / "export").is_dir():  # a run directory
        tag = latest_tag(path / "checkpoints")
        if tag is not None:
            return read_init_source(path / "checkpoints" / tag)
        if (path / "export" / WEIGHTS).is_file():
            return read_init_source(path / "export")
        raise ValueError(f"train.init_from={path}: a run directory without a complete checkpoint or an export")
    if (path / "zero").is_dir():
        return path, _read_universal(path), None
    if _is_deepspeed_tag(path):
        return path, _read_deepspeed(path.parent, path.name), None
    if (path / "latest").is_file():
        tag = (path / "latest").read_text().strip()
        if not _is_deepspeed_tag(path / tag):
            raise ValueError(f"train.init_from={path}: 'latest' names {tag!r}, which holds no *model_states.pt")
        return path / tag, _read_deepspeed(path, tag), None
    raise ValueError(
        f"train.init_from={path}: not an export ({WEIGHTS}), a checkpoint ({COMPLETE}), a run directory, "
        "a DeepSpeed ZeRO checkpoint (*model_states.pt, or 'latest') or a universal one (zero/)"
    )


def _check_source_config(cfg: Config, src_cfg: dict[str, Any], model: DiT3D, source: str) -> None:
    """Clear errors for what the shapes alone would report less clearly: patch and temporal mode."""
    src_model, src_dfm = src_cfg.get("model", {}), src_cfg.get("dfm", {})
    src_factors = src_dfm.get("factors", [])
    if len(src_factors) == 0 and "patch_size" in src_model:
        src_patch = tuple(int(v) for v in src_model["patch_size"])
        src_up = src_model.get("upsample_factors") or [(1, 1, 1)]
        src_patch = tuple(p * u for p, u in zip(src_patch, src_up[0]))
        if model.embed_patches[0] != src_patch:
            ratio = [e // c if c and e % c == 0 else None for e, c in zip(src_patch, model.patches[0])]
            hint = (
                f"; set model.upsample_factors: [{list(ratio)}{', [1, 1, 1]' * (model.num_stages - 1)}]"
                if None not in ratio and model.num_stages > 1
                else ""
            )
            raise ValueError(
                f"train.init_from={source}: the source's patch is {src_patch}, this model's coarse stage patchifies "
                f"with {model.embed_patches[0]}{hint}"
            )
    if cfg.dfm.num_stages > 1 and src_dfm.get("temporal_mode", cfg.dfm.temporal_mode) != cfg.dfm.temporal_mode:
        raise ValueError(
            f"train.init_from={source}: the source used dfm.temporal_mode={src_dfm['temporal_mode']!r}, "
            f"this run {cfg.dfm.temporal_mode!r}"
        )


@dataclasses.dataclass
class InitFrom:
    """Weights checked against the model, ready to load (`apply`) once the model exists."""

    source: Path
    weights: dict[str, torch.Tensor]  # source weights under our names (key map applied)
    source_stages: int
    strict: bool
    out_dir: Path
    summary: InitSummary

    def apply(self, model: nn.Module, rank: int) -> InitSummary:
        """Load into `model` (before DeepSpeed wraps it); rank 0 logs the summary and writes init_from.json."""
        state, summary = map_state(
            model.state_dict(), self.weights, str(self.source), self.strict, source_stages_hint=self.source_stages
        )
        model.load_state_dict(state, strict=True)
        if rank == 0:
            for line in summary.lines():
                log.info(line)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / SUMMARY_FILE).write_text(json.dumps(summary.as_dict(), indent=1) + "\n")
        return summary


def plan_init_from(cfg: Config, resume_checkpoint: Optional[Path]) -> Optional[InitFrom]:
    """Read and check `train.init_from` before any process group; None when unset or when the run resumes.

    Every error (a missing or half-written source, a key map that does not apply, another width,
    depth, channel count or class count under strict loading) is a ValueError naming the path and the
    tensor with both shapes; nothing is written to the run directory here.
    """
    t = cfg.train
    if not t.init_from:
        return None
    if resume_checkpoint is not None:
        log.warning(
            "train.init_from=%s ignored: %s has checkpoints, resuming from %s (init_from only starts new runs)",
            t.init_from,
            t.output_dir,
            resume_checkpoint,
        )
        return None
    source, weights, src_cfg = read_init_source(t.init_from)
    if t.init_key_map:
        weights = apply_key_map(weights, load_key_map(t.init_key_map), f"train.init_from={source}")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = DiT3D(cfg.model, cfg.dfm)
    if src_cfg is not None:
        _check_source_config(cfg, src_cfg, model, str(source))
    src_stages = len(src_cfg["dfm"]["factors"]) + 1 if src_cfg is not None and "dfm" in src_cfg else None
    _, summary = map_state(
        model.state_dict(), weights, f"train.init_from={source}", t.init_strict, source_stages_hint=src_stages
    )
    return InitFrom(source, weights, summary.source_stages, t.init_strict, Path(t.output_dir), summary)
