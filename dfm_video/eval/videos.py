"""Reading evaluation inputs into uint8 frames: (T, H, W, 3) per video, RGB, channels last.

Today an input is a folder of video files (searched recursively, sorted by relative path, so the
first N are the same on every run). `iter_videos` is the one seam for other inputs: preprocessed
shards (decoded through their autoencoder) will plug in there once the data pipeline's reader
exists; until then a folder of *.parquet shards is refused with a ValueError that says so.
Each clip is its first `num_frames` decoded frames; a shorter video is an error, never padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix == ".parquet" or path.is_dir() and next(path.rglob("*.parquet"), None):
        raise ValueError(
            f"{path}: holds preprocessed *.parquet shards; shard input needs the data pipeline's "
            "reader, which evaluation does not wire yet. Pass a folder of video files instead."
        )
    if not path.is_dir():
        raise ValueError(f"{path}: expected a folder of video files ({', '.join(VIDEO_EXTENSIONS)})")


def list_videos(path: str | Path) -> list[Path]:
    """Video files under `path` (recursive), sorted by relative path; ValueError if none."""
    root = Path(path).expanduser()
    _check_dir(root)
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
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
    for f in files:
        yield read_video(f, num_frames)


def select_videos(path: str | Path, num: int | None) -> list[Path]:
    """The first `num` (all if None) video files of an input; ValueError if there are fewer."""
    files = list_videos(path)
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
    for f in select_videos(path, num):
        clip = read_video(f, num_frames)
        if first is None:
            first = (f, clip.shape)
        elif clip.shape != first[1]:
            raise ValueError(
                f"{f}: frame size {tuple(clip.shape[1:3])} differs from {first[0]}'s {tuple(first[1][1:3])}; "
                "load_videos stacks clips, use iter_videos for mixed sizes"
            )
        clips.append(clip)
    return torch.stack(clips)
