"""Command line of the trainer (used by dfm_video/train.py and `python -m dfm_video.train`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dfm_video import launch_env
from dfm_video.config import load_config, require, resolve_config_path
from dfm_video.console import configure_output


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dfm_video/train.py", description="Train a DFM video DiT under DeepSpeed.")
    p.add_argument("--config", required=True, help="YAML path, or a name under configs/ (e.g. k700.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable"
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="'auto' (latest checkpoint in train.output_dir, if any), 'none', or a checkpoint folder",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="with --resume none: delete the run already in train.output_dir"
    )
    p.add_argument(
        "--allow-change",
        dest="allow_change",
        action="append",
        default=[],
        metavar="KEY",
        help="on resume, accept and apply a deliberate config change (e.g. optim.lr, optim.warmup_steps); repeatable",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show library logs and warnings (DeepSpeed INFO, FutureWarnings); also DFM_VERBOSE=1",
    )
    p.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher
    # test hooks: NaN losses on N steps from one step; infinite gradients (finite loss) on one step
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fail-times", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--fail-grad-at-step", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    launch_env.from_slurm()  # srun tasks: RANK / WORLD_SIZE before the resume plan reads them
    configure_output(args.verbose)
    try:
        path = resolve_config_path(args.config)
        cfg = load_config(path, args.overrides)
        if not cfg.data.mix:  # a mix names its datasets itself
            require(cfg, "data.shards", source=str(path))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # heavy imports (deepspeed) only after the config is valid
    from dfm_video.train.trainer import NonFiniteLossError, train

    try:
        train(
            cfg,
            resume=args.resume,
            config_source=str(path),
            fail_at_step=args.fail_at_step,
            fail_times=args.fail_times,
            overwrite=args.overwrite,
            allow_change=args.allow_change,
            fail_grad_at_step=args.fail_grad_at_step,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
