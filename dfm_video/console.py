"""Quiet console by default: our own progress bars and summaries, not library chatter.

`report(message)` is how library code tells the person running a job something they asked for
(a run's layout, a summary line): stdout, flushed, never filtered by a logging level. Diagnostics
go through `logging`.

`configure_output(verbose)` is called first thing by the CLIs. Quiet (the default) hides library
FutureWarnings/DeprecationWarnings (e.g. DeepSpeed calling deprecated torch.distributed APIs) and
keeps DeepSpeed's logger at WARNING; verbose (`--verbose` or DFM_VERBOSE=1, which launchers and
child processes inherit) leaves Python's defaults alone and sets DeepSpeed's logger to INFO.
Nothing is dropped from files: metrics.jsonl, TensorBoard and checkpoints are the same either way.
"""

from __future__ import annotations

import logging
import os
import warnings

ENV = "DFM_VERBOSE"


def verbose_from_env() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def configure_output(verbose: bool = False) -> bool:
    """Set this process (and, through the environment, its children) quiet or verbose; returns verbose."""
    verbose = verbose or verbose_from_env()
    if verbose:
        os.environ[ENV] = "1"
        logging.getLogger("DeepSpeed").setLevel(logging.INFO)
        return True
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # children (Ray workers, DataLoader workers, launched ranks) start their own interpreters
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS", ""), "ignore::FutureWarning", "ignore::DeprecationWarning"])
    )
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return False


def report(message: str) -> None:
    """One line for the person running the job, on stdout (flushed: launchers interleave ranks)."""
    print(message, flush=True)
