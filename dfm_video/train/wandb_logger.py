"""Optional Weights & Biases logging beside TensorBoard (`train.wandb`), rank 0 only.

Same metric names as metrics.jsonl / TensorBoard; in-training sample videos are logged from their
mp4 files. `train.wandb_mode: offline` (the default) writes the run under
{train.output_dir}/wandb without any network (`wandb sync` uploads it later). The run id is kept
in {train.output_dir}/wandb_id.txt so a resumed run appends to the same W&B run. wandb is an
optional extra: `pip install 'dfm-video[wandb]'`.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Optional

from dfm_video.config import Config, config_to_dict
from dfm_video.console import verbose_from_env


def check_wandb(cfg: Config, source: str = "config") -> None:
    """Fail before any process group starts when W&B is asked for but not installed."""
    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError(
            f"{source}: train.wandb=true but the wandb package is not installed "
            "(pip install 'dfm-video[wandb]', or set train.wandb=false)"
        )


class WandbLogger:
    def __init__(self, cfg: Config, rank: int, out_dir: str | Path) -> None:
        self.run = None
        if rank != 0 or not cfg.train.wandb:
            return
        import wandb

        if not verbose_from_env():
            os.environ.setdefault("WANDB_SILENT", "true")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        id_file = out_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=cfg.train.wandb_project,
            name=cfg.name,
            id=run_id,
            resume="allow",
            dir=str(out_dir),
            mode=cfg.train.wandb_mode,
            config=config_to_dict(cfg),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def videos(self, step: int, tag: str, paths: list[Path], captions: Optional[list[str]] = None) -> None:
        if self.run is None:
            return
        import wandb

        vids = [wandb.Video(str(p), caption=(captions[i] if captions else None)) for i, p in enumerate(paths)]
        self.run.log({tag: vids}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
