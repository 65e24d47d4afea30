"""Stage-wise generation: `python -m dfm_video.sample --checkpoint PATH --out DIR [...]`.

Loads EMA weights (an export folder, a DeepSpeed checkpoint folder of any ZeRO stage, or a run
directory), integrates the pyramid stage by stage (coarse to fine) with the Euler solver of
`dfm_video.dfm`, undoes the per-level standardisation, recomposes the pyramid and decodes it with
the autoencoder the data was encoded with. Writes one mp4 per sample (PNG for T = 1 models), a
contact sheet, and with --previews the low-resolution video of the first k stages at the moment
stage k reaches tau. Same seed, same output.

At scale (dfm_video/sampling, docs/evaluation.md): `torchrun --nproc_per_node G -m dfm_video.sample
... --num-samples N --batch-size B` (or `deepspeed --module dfm_video.sample`, or RANK / WORLD_SIZE
set by hand) splits the N samples over the ranks; sample i's label, noise and file name depend on
i alone, so the files are the same for any world size, and a rerun finishes a killed run.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from dfm_video.checkpoints import latest_tag, load_export, read_checkpoint_weights
from dfm_video.config import Config, config_from_dict, validate
from dfm_video.console import configure_output
from dfm_video.dfm import LevelStats, destandardize, euler_sample, level_shapes, recompose, sampling_schedule
from dfm_video.media import to_uint8, write_mp4, write_png
from dfm_video.models import DiT3D, build_model
from dfm_video.sampling.codec import codec_for, resolve_codec, weights_digest
from dfm_video.sampling.plan import sample_noise
from dfm_video.weights import check_state_dict


@dataclass
class Generator:
    """A loaded model plus everything needed to turn its levels into video."""

    model: DiT3D
    cfg: Config
    meta: dict[str, Any]
    source: Path
    weights_sha256: str = ""
    """Digest of the loaded weights (names, dtypes, shapes, bytes): the same for an export and its checkpoint."""

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])


def _resolve_checkpoint(path: Path) -> Path:
    """A run dir -> its export (or latest checkpoint); a checkpoints root -> its latest checkpoint."""
    if not path.exists():
        raise ValueError(f"--checkpoint {path}: no such file or directory")
    if (path / "model.safetensors").is_file() or (path / "COMPLETE").is_file():
        return path
    if (path / "export" / "model.safetensors").is_file():
        return path / "export"
    for root in (path / "checkpoints", path):
        tag = latest_tag(root)
        if tag is not None:
            return root / tag
    raise ValueError(
        f"--checkpoint {path}: not an export folder (model.safetensors), a complete checkpoint folder (COMPLETE) "
        "or a run directory holding either"
    )


def load_generator(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    autoencoder_path: Optional[str] = None,
) -> Generator:
    """Build the model from the saved resolved config and load the EMA weights into it.

    The autoencoder is looked up at `autoencoder_path`, else in the export's bundled copy, else at
    the path recorded at preprocessing time (dfm_video.sampling.codec)."""
    src = _resolve_checkpoint(Path(path))
    if (src / "model.safetensors").is_file():
        weights, cfg, meta = load_export(src)
        partitioned = False
    else:
        weights, cfg_dict, meta, partitioned = read_checkpoint_weights(src)
        cfg = config_from_dict(cfg_dict, str(src))
        validate(cfg, str(src))
    model = build_model(cfg.model, cfg.dfm)
    state = model.state_dict()
    if partitioned:  # ZeRO-3 EMA: flat concatenation of rank partitions (padded at the end)
        weights = {k: v[: state[k].numel()].view(state[k].shape) for k, v in weights.items() if k in state}
    check_state_dict(state, weights, f"{src} (weights vs the model built from its config)")
    model.load_state_dict(weights)
    model.to(device=device, dtype=dtype).eval()
    meta = dict(meta, autoencoder=resolve_codec(meta["autoencoder"], src, autoencoder_path))
    return Generator(model=model, cfg=cfg, meta=meta, source=src, weights_sha256=weights_digest(weights))


def resolve_labels(gen: Generator, label: Optional[str], class_id: Optional[int], num: int) -> list[int]:
    """Class ids for `num` samples: one label, one id, or (neither) cycling through all labels."""
    labels = gen.labels
    if label is not None and class_id is not None:
        raise ValueError("give --label or --class-id, not both")
    if label is not None:
        if label not in labels:
            close = difflib.get_close_matches(label, labels, n=5, cutoff=0.4)
            hint = (
                f"closest: {', '.join(repr(c) for c in close)}"
                if close
                else f"valid labels include {', '.join(repr(c) for c in labels[:5])}"
            )
            raise ValueError(f"--label {label!r} is not a label of this model ({len(labels)} labels); {hint}")
        return [labels.index(label)] * num
    if class_id is not None:
        if not 0 <= class_id < gen.model.null_class:
            raise ValueError(
                f"--class-id {class_id} is out of range: this model has classes 0..{gen.model.null_class - 1}"
            )
        return [class_id] * num
    if not labels:
        return [gen.model.null_class] * num  # an unlabelled dataset: unconditional samples
    return [i % len(labels) for i in range(num)]


@torch.no_grad()
def generate(
    gen: Generator,
    y: Sequence[int],
    *,
    steps: Sequence[int],
    tau: float,
    cfg_scale: float = 1.0,
    cfg_interval: Optional[tuple[float, float]] = None,
    seed: int = 0,
    previews: bool = False,
    progress: bool = False,
    indices: Optional[Sequence[int]] = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Sample latents (B, C, T, H, W) (destandardised, recomposed) and, if asked, per-stage previews.

    With `indices`, row b's noise comes from (seed, indices[b]) alone, so a sample does not depend
    on which batch or rank made it; without, one generator seeded with `seed` draws the batch."""
    model, cfg, meta = gen.model, gen.cfg, gen.meta
    S = cfg.dfm.num_stages
    if len(steps) != S:
        raise ValueError(f"--steps needs one count per stage ({S}), got {list(steps)}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    C, T, H, W = meta["latent_shape"]
    factors = meta.get("factors", cfg.dfm.factors)  # a T = 1 bucket of a mixed run skips temporal factors
    shapes = level_shapes((T, H, W), factors, cfg.dfm.temporal_mode)
    if indices is not None:
        if len(indices) != len(y):
            raise ValueError(f"{len(indices)} sample indices for {len(y)} labels")
        noise = [n.to(device) for n in sample_noise(seed, indices, C, shapes)]
    else:
        g = torch.Generator().manual_seed(seed)  # CPU noise: the same seed gives the same video on any device
        noise = [torch.randn(len(y), C, *s, generator=g).to(device) for s in shapes]
    stats = LevelStats.from_dict(meta["stats"]) if meta.get("stats") else None
    preview_latents: dict[int, Tensor] = {}

    def on_stage_done(k: int, levels: list[Tensor], step: int) -> None:
        if previews and k < S - 1:
            lv = levels[: k + 1]
            if stats is not None:
                lv = destandardize(lv, LevelStats(stats.mean[: k + 1], stats.std[: k + 1]))
            preview_latents[k] = recompose(lv, factors[:k], cfg.dfm.temporal_mode)

    def velocity(x: list[Tensor], t: Tensor, active: Tensor, labels: Tensor) -> list[Tensor]:
        return [v.float() for v in model([v.to(dtype) for v in x], t, active, labels)]

    levels = euler_sample(
        velocity,
        noise,
        sampling_schedule(steps, tau),
        torch.tensor(list(y), dtype=torch.long, device=device),
        cfg_scale=cfg_scale,
        cfg_interval=cfg_interval,
        null_label=model.null_class,
        on_stage_clean=on_stage_done,  # previews decode the clean estimate, not the noisy latent
        progress=progress,
    )
    if stats is not None:
        levels = destandardize(levels, stats)
    return recompose(levels, factors, cfg.dfm.temporal_mode), preview_latents


def decode_latents(gen: Generator, latents: Tensor) -> Tensor:
    """Latents (B, C, T, H, W) -> video (B, 3, F, H', W') in [-1, 1] with the data's autoencoder."""
    return codec_for(gen.meta["autoencoder"], latents.device).decode(latents.float())


def write_outputs(gen: Generator, video: Tensor, y: Sequence[int], out: Path, prefix: str = "sample") -> list[Path]:
    """One mp4 per sample (PNG when the model makes single frames)."""
    fps = float(gen.meta.get("fps") or 8.0)
    names = gen.labels
    paths = []
    for i, v in enumerate(video):
        frames = to_uint8(v)
        tag = names[y[i]].replace("/", "_").replace(" ", "_") if y[i] < len(names) else "uncond"
        stem = out / f"{prefix}_{i:03d}_{tag}"
        if frames.shape[0] == 1:
            paths.append(write_png(stem.with_suffix(".png"), frames[0]))
        else:
            paths.append(write_mp4(stem.with_suffix(".mp4"), frames, fps))
    return paths


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
    p.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )  # the deepspeed launcher passes it
    p.add_argument("--verbose", action="store_true", help="show library logs and warnings (also DFM_VERBOSE=1)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One rank's share of the samples (all of them in a plain process); see dfm_video.sampling.runner."""
    from dfm_video.sampling import runner  # imports this module: keep the import here

    return runner.run(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    configure_output(args.verbose)
    try:
        report = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "samples" not in report:  # ranks > 0: rank 0 prints the summary
        return 0
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
