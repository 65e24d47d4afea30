"""Command line of the trainer (used by dfm_video/train.py and `python -m dfm_video.train`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from tqdm.auto import tqdm

from dfm_video import launch_env
from dfm_video.config import load_config, require, resolve_config_path
from dfm_video.console import configure_output
from dfm_video.train.trainer import NonFiniteLossError, train


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
    return p.parse_args(argv)


class _ConsoleHandler(logging.Handler):
    """The trainer's messages on the console: information to stdout, warnings and errors to stderr
    prefixed with their level, written past the rank-0 progress bar without breaking it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stdout
            if record.levelno >= logging.WARNING:
                text, stream = f"{record.levelname.lower()}: {text}", sys.stderr
            tqdm.write(text, file=stream)
            stream.flush()
        except Exception:
            self.handleError(record)


def log_to_console() -> None:
    """Show `dfm_video.train`'s log records (rank 0 emits them) on the console, once per process."""
    logger = logging.getLogger("dfm_video.train")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    launch_env.from_slurm()  # srun tasks: RANK / WORLD_SIZE before the resume plan reads them
    configure_output(args.verbose)
    log_to_console()
    try:
        path = resolve_config_path(args.config)
        cfg = load_config(path, args.overrides)
        if not cfg.data.mix:  # a mix names its datasets itself
            require(cfg, "data.shards", source=str(path))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        train(
            cfg,
            resume=args.resume,
            config_source=str(path),
            overwrite=args.overwrite,
            allow_change=args.allow_change,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
