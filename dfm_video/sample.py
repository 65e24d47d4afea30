"""Stage-wise generation: `python -m dfm_video.sample --checkpoint PATH --out DIR [...]`.

Loads EMA weights (an export folder, a DeepSpeed checkpoint folder of any ZeRO stage, or a run
directory), integrates the pyramid stage by stage (coarse to fine) with the Euler solver of
`dfm_video.dfm`, undoes the per-level standardisation, recomposes the pyramid and decodes it with
the autoencoder the data was encoded with. Writes one mp4 per sample (PNG for T = 1 models), a
contact sheet, and with --previews the low-resolution video of the first k stages at the moment
stage k reaches tau. Same seed, same output. This module is the command line only: the generator
and the runner live in `dfm_video.sampling`.

At scale (dfm_video/sampling, docs/evaluation.md): `torchrun --nproc_per_node G -m dfm_video.sample
... --num-samples N --batch-size B` (or `deepspeed --module dfm_video.sample`, or RANK / WORLD_SIZE
set by hand) splits the N samples over the ranks; sample i's label, noise and file name depend on
i alone, so the files are the same for any world size, and a rerun finishes a killed run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from dfm_video.console import configure_output
from dfm_video.sampling import run_sampling


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives (a caller may have replaced it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _show_progress() -> None:
    """Progress lines and warnings of the sampler (logger `dfm_video.sample`) on stderr, once per process."""
    log = logging.getLogger("dfm_video.sample")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.INFO)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dfm_video.sample", description="Generate videos stage by stage (coarse to fine)."
    )
    p.add_argument("--checkpoint", required=True, help="export folder, DeepSpeed checkpoint folder, or run directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--label", default=None, help="class label name, e.g. 'playing guitar'")
    p.add_argument("--class-id", type=int, default=None, help="class index")
    p.add_argument("--num-samples", type=int, default=None, help="videos to generate (default: sample.num_samples)")
    p.add_argument(
        "--steps", default=None, help="Euler steps per stage, coarse to fine, e.g. 30,10 (default: sample.steps)"
    )
    p.add_argument("--tau", type=float, default=None, help="hand-over threshold (default: sample.tau)")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: sample.cfg_scale)")
    p.add_argument("--cfg-interval", default=None, help="guide only while a stage's t is in [a,b], e.g. 0.1,0.9")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: sample.seed)")
    p.add_argument(
        "--previews",
        action="store_true",
        help="also write the coarse-stage previews at the moment each stage reaches tau",
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="model dtype (bf16 on GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--bucket",
        default=None,
        help="models trained on data.mix: which dataset's shape to make (index or name; default 0)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the per-batch progress lines")
    p.add_argument("--batch-size", type=int, default=None, help="samples per forward batch (default: min(N, 8))")
    p.add_argument(
        "--labels-file",
        default=None,
        help="one label name or class id per line, line i for sample i (default: class-balanced)",
    )
    p.add_argument(
        "--autoencoder-path",
        default=None,
        help="local folder of the autoencoder, overriding the recorded or bundled one",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete the samples already in --out first (default: keep and resume)"
    )
    # The DeepSpeed launcher passes --local_rank to every rank (torchrun sets LOCAL_RANK instead):
    # part of the launcher contract, so accepted and hidden from --help.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--verbose", action="store_true", help="show library logs and warnings (also DFM_VERBOSE=1)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    configure_output(args.verbose)
    _show_progress()
    try:
        report = run_sampling(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "samples" not in report:  # ranks > 0: rank 0 prints the summary
        return 0
    print(f"weights: {report['checkpoint']} (step {report['step']})")
    print(
        f"{report['num_samples']} samples in {Path(args.out)} "
        f"({report['written']} written now, {report['skipped']} existed; "
        f"contact sheet {report['contact_sheet']}"
        + (f", {len(report['previews'])} previews" if report["previews"] else "")
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
