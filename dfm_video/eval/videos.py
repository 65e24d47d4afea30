"""Reading evaluation inputs into uint8 frames: (T, H, W, 3) per video, RGB, channels last.

An input is a folder of video files (searched recursively, sorted by relative path, so the first
N are the same on every run), or a preprocessed dataset directory (`manifest.json` + `shards/`,
written by data_pipeline.preprocess) whose clips are recomposed from their pyramid levels and
decoded with the autoencoder recorded in the manifest (shards in name order, rows in file order).
Each clip is its first `num_frames` frames; a shorter video is an error, never padded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from dfm_video.data import schema

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")
# Images are one-frame videos (T = 1), read by the same decoder: FID / FDD of image models.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SAMPLES_FILE = "samples.json"  # written by dfm_video.sample: its samples, not the contact sheet or previews


def is_shard_dataset(path: Path) -> bool:
    """A data_pipeline.preprocess output directory (decoded through its autoencoder)."""
    return path.is_dir() and (path / schema.MANIFEST_FILE).is_file() and (path / schema.SHARD_DIR).is_dir()


def _shard_items(root: Path) -> list[tuple[Path, int]]:
    """(shard, row) of every clip of a dataset, in shard-name then row order."""
    info = schema.DatasetInfo.load(root)
    return [(p, i) for p in info.shards for i in range(schema.read_shard_meta(p).num_samples)]


def _decode_shard_clips(items: list[tuple[Path, int]], root: Path, num_frames: int) -> Iterator[Tensor]:
    from dfm_video.autoencoders import load_autoencoder
    from dfm_video.dfm import recompose
    from dfm_video.media import to_uint8

    info = schema.DatasetInfo.load(root)
    codec = info.autoencoder
    patch = (int(codec.get("temporal", 1)), *[int(v) for v in codec.get("spatial", (1, 1))])
    ae = load_autoencoder(codec["kind"], codec.get("path", ""), pixel_patch=patch)
    wanted: dict[Path, set[int]] = {}
    for shard, row in items:
        wanted.setdefault(shard, set()).add(row)
    for shard, rows in wanted.items():
        meta = schema.read_shard_meta(shard)
        for i, sample in enumerate(schema.iter_samples(shard)):
            if i not in rows:
                continue
            latent = recompose([x[None] for x in sample.levels], meta.factors, meta.temporal_mode)
            frames = torch.from_numpy(to_uint8(ae.decode(latent)[0]))
            if frames.shape[0] < num_frames:
                raise ValueError(
                    f"{shard}: clip '{sample.key}' has {frames.shape[0]} frames but {num_frames} are needed per clip (--frames)"
                )
            yield frames[:num_frames]


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".parquet" or (
        path.is_dir() and not is_shard_dataset(path) and next(path.rglob("*.parquet"), None)
    ):
        raise ValueError(
            f"{path}: holds *.parquet files but is not a dataset directory (manifest.json + shards/); "
            "pass the data_pipeline.preprocess output directory itself, or a folder of video files"
        )
    if not path.is_dir():
        raise ValueError(f"{path}: expected a folder of video files ({', '.join(VIDEO_EXTENSIONS)})")


def list_videos(path: str | Path) -> list[Path]:
    """Video (or image) files under `path` (recursive), sorted by relative path; ValueError if none.
    A folder written by dfm_video.sample gives the samples its samples.json lists."""
    root = Path(path).expanduser()
    _check_dir(root)
    if (root / SAMPLES_FILE).is_file():
        return sorted((root / Path(p).name for p in json.loads((root / SAMPLES_FILE).read_text())["samples"]),
                      key=lambda p: p.name)
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise ValueError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return files


def read_video(path: str | Path, num_frames: int) -> Tensor:
    """The first `num_frames` frames of one video as uint8 (num_frames, H, W, 3), RGB.

    Raises:
        ValueError: unreadable file, or fewer than `num_frames` frames (names both counts).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == num_frames:
                    break
    except av.FFmpegError as e:
        raise ValueError(f"{path}: cannot decode video ({e})") from e
    if len(frames) < num_frames:
        raise ValueError(
            f"{path}: has {len(frames)} frames but {num_frames} are needed per clip (--frames); "
            "all videos must have at least that many"
        )
    return torch.from_numpy(np.stack(frames))


def iter_videos(path: str | Path, num: int | None, num_frames: int) -> Iterator[Tensor]:
    """Yield `num` clips (all if None) from an input, each uint8 (num_frames, H, W, 3).

    Sizes may differ between videos; the feature networks resize each one. The count check
    happens before any decoding, so a too-small set fails fast.
    """
    files = select_videos(path, num)
    if files and isinstance(files[0], tuple):
        yield from _decode_shard_clips(files, Path(path).expanduser(), num_frames)
        return
    for f in files:
        yield read_video(f, num_frames)


def select_videos(path: str | Path, num: int | None) -> list:
    """The first `num` (all if None) videos of an input: file paths, or (shard, row) pairs for a
    preprocessed dataset; ValueError if there are fewer."""
    root = Path(path).expanduser()
    files = _shard_items(root) if is_shard_dataset(root) else list_videos(path)
    if not files:
        raise ValueError(f"{root}: no clips found")
    if num is not None:
        if num < 1:
            raise ValueError(f"--num must be >= 1, got {num}")
        if len(files) < num:
            raise ValueError(f"{path}: {num} videos requested (--num) but only {len(files)} found")
        files = files[:num]
    return files


def load_videos(path: str | Path, num: int | None, num_frames: int) -> Tensor:
    """All selected clips stacked: uint8 (N, num_frames, H, W, 3); they must share H and W.

    Convenient for small sets; `iter_videos` streams large ones.
    """
    clips, first = [], None
    for f, clip in zip(select_videos(path, num), iter_videos(path, num, num_frames)):
        if first is None:
            first = (f, clip.shape)
        elif clip.shape != first[1]:
            raise ValueError(
                f"{f}: frame size {tuple(clip.shape[1:3])} differs from {first[0]}'s {tuple(first[1][1:3])}; "
                "load_videos stacks clips, use iter_videos for mixed sizes"
            )
        clips.append(clip)
    return torch.stack(clips)
