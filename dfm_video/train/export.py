"""Exported weights for the sampler: `model.safetensors` (EMA, float32) + the resolved config +
what the data was encoded with (labels, level statistics, autoencoder, latent shape), and under
`autoencoder/<name>/` the autoencoder's config.json (always) or its whole folder (by choice):

    python -m dfm_video.train.export --checkpoint RUN_OR_CHECKPOINT --out DIR [--autoencoder-weights]

An export with the weights samples on a machine that never saw the preprocessing; one with the
config only still needs the VAE (`--autoencoder-path`), but names exactly which one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import save_file

from dfm_video import faults
from dfm_video.autoencoders.diffusers_vae import resolve_vae_dir
from dfm_video.checkpoints import AUTOENCODER, CONFIG, DATASET, WEIGHTS, load_file_metadata
from dfm_video.config import Config, save_config
from dfm_video.sampling import load_generator  # the export is checked by loading it with the sampler's loader
from dfm_video.train.durable import fsync_path, fsync_tree

BUNDLE_CHOICES = ("none", "config", "weights")
log = logging.getLogger(__name__)


def bundle_autoencoder(codec: dict[str, Any], out_dir: Path, what: str) -> Optional[Path]:
    """Copy the codec's config.json ("config") or its whole folder ("weights") to out_dir/autoencoder/.

    The copy keeps the folder's name (and a pipeline's `vae/` level): the codec id, which the
    sampler checks, is made of that name and the config's hash. A pixel codec has nothing to copy.
    """
    if what not in BUNDLE_CHOICES:
        raise ValueError(f"autoencoder bundling must be one of {BUNDLE_CHOICES}, got {what!r}")
    if what == "none" or codec.get("kind", "pixel") == "pixel":
        return None
    try:
        src = resolve_vae_dir(codec["kind"], codec.get("path", ""))
    except ValueError as exc:
        if what == "weights":
            raise
        log.warning("export without the autoencoder's config: %s", exc)  # training never needs the VAE itself
        return None
    rel = Path(src.parent.name, "vae") if src.name == "vae" else Path(src.name)
    dst = Path(out_dir) / AUTOENCODER / rel
    if what == "weights":
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "config.json", dst / "config.json")
    return dst


def export_weights(
    weights: dict[str, torch.Tensor],
    cfg: Config,
    dataset_meta: dict[str, Any],
    out_dir: Path,
    step: int,
    autoencoder: str = "config",
) -> Path:
    """Write the export atomically; `autoencoder`: what of the codec to carry along (none / config /
    weights, see `bundle_autoencoder`).

    Crash-safe and self-healing: the files go into a fresh `<out>.tmp/` (a stale one from a killed
    export is removed first), are fsynced, and replace `<out>` through `<out>.old`. A crash between
    the two renames leaves only `<out>.old`, the previous complete export: the next export (or
    `heal_export`) puts it back first, so no crash leaves the folder unusable or blocks a later export.

    Fault `export.crash_between_renames` = true: SIGKILL this process after `<out>` became `<out>.old`.
    """
    out_dir = Path(out_dir)
    heal_export(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bundle_autoencoder(dataset_meta.get("autoencoder") or {}, tmp, autoencoder)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS), metadata={"step": str(step)})
    save_config(cfg, tmp / CONFIG)
    (tmp / DATASET).write_text(json.dumps(dataset_meta, indent=2))
    fsync_tree(tmp)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        os.replace(out_dir, old)
        if faults.get("export.crash_between_renames"):
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, out_dir)
        fsync_path(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    fsync_path(out_dir.parent)
    return out_dir


def heal_export(out_dir: Path) -> None:
    """Finish what a crashed export left: `<out>.old` without `<out>` is the last complete export
    (restored); beside a complete `<out>` it is a leftover (removed)."""
    out_dir = Path(out_dir)
    old = out_dir.with_name(out_dir.name + ".old")
    if not old.exists():
        return
    if out_dir.exists():
        shutil.rmtree(old)
    else:
        os.replace(old, out_dir)
        log.warning("restored %s from %s (an export was interrupted between its renames)", out_dir, old)
    fsync_path(out_dir.parent)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Re-export a run, export or checkpoint (any ZeRO stage), optionally with the autoencoder's weights."""
    p = argparse.ArgumentParser(prog="python -m dfm_video.train.export", description=main.__doc__)
    p.add_argument("--checkpoint", required=True, help="run directory, export folder or DeepSpeed checkpoint folder")
    p.add_argument("--out", required=True, help="new export folder")
    p.add_argument(
        "--autoencoder-weights", action="store_true", help="copy the whole autoencoder folder, not only its config"
    )
    p.add_argument("--autoencoder-path", default=None, help="where the autoencoder is, if not at its recorded path")
    args = p.parse_args(argv)

    try:
        gen = load_generator(args.checkpoint, "cpu", torch.float32, autoencoder_path=args.autoencoder_path)
        step = int(load_file_metadata(gen.source).get("step", 0))
        out = export_weights(
            gen.model.state_dict(),
            gen.cfg,
            gen.meta,
            Path(args.out),
            step,
            autoencoder="weights" if args.autoencoder_weights else "config",
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported {gen.source} to {out} (weights sha256 {gen.weights_sha256[:12]}, "
        f"autoencoder {'weights' if args.autoencoder_weights else 'config'} included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
