"""Reading evaluation inputs into uint8 frames: (T, H, W, 3) per video, RGB, channels last.

An input is a folder of video (or image) files searched recursively, a sampling output folder
(`sampling.json`: its `sample_*` files in index order, previews excluded), or a preprocessed dataset
directory (`manifest.json` + `shards/`, written by data_pipeline.preprocess) whose clips are
recomposed from their pyramid levels and decoded with the autoencoder recorded in the manifest.

`--num N` draws class-balanced: items are grouped by class (a file's parent folder, a shard row's
label), each class in sorted order, and taken round-robin over the sorted classes; a flat folder is
one class, so its draw is the first N by relative path. The draw is the same on every run.

A clip is `num_frames` frames: consecutive decoded frames, or with `fps` the frames whose
timestamps are nearest to times k / fps; the display rotation is applied; with `size` every frame
is scaled to cover (H, W) and centre-cropped. These are the training clips' rules, from the same
code (`dfm_video.media`). A shorter video is an error, never padded.

Which files of a folder are media is the project's one rule (`dfm_video.media.media_kind`, also
preprocessing's); every other file is listed in a warning with the reason it is left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import Tensor

from dfm_video.autoencoders import load_autoencoder
from dfm_video.data import schema
from dfm_video.dfm import recompose
from dfm_video.media import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ClipError,
    media_kind,
    read_clip_pyav,
    resize_crop,
    to_uint8,
)
from dfm_video.sampling import SAMPLES_REPORT, SAMPLING_RECORD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    """How every clip of a set is cut: frame count, optional frame rate and (H, W) crop."""

    num_frames: int
    fps: Optional[float] = None
    size: Optional[tuple[int, int]] = None

    def settings(self) -> dict:
        return {"frames": self.num_frames, "fps": self.fps, "size": list(self.size) if self.size else None}


def is_shard_dataset(path: Path) -> bool:
    """A data_pipeline.preprocess output directory (decoded through its autoencoder)."""
    return path.is_dir() and (path / schema.MANIFEST_FILE).is_file() and (path / schema.SHARD_DIR).is_dir()


def _shard_items(root: Path) -> tuple[list[tuple[Path, int]], list[int]]:
    """(shard, row) of every clip of a dataset in shard-name then row order, and each one's label id."""
    info = schema.DatasetInfo.load(root)
    items, labels = [], []
    for p in info.shards:
        ids = pq.read_table(p, columns=["label_id"]).column("label_id").to_pylist()
        items += [(p, i) for i in range(len(ids))]
        labels += ids
    return items, labels


def _decode_shard_clips(
    items: list[tuple[Path, int]],
    root: Path,
    num_frames: int,
    device: Optional[torch.device] = None,
    size: Optional[tuple[int, int]] = None,
) -> Iterator[Tensor]:
    info = schema.DatasetInfo.load(root)
    codec = info.autoencoder
    patch = (int(codec.get("temporal", 1)), *[int(v) for v in codec.get("spatial", (1, 1))])
    ae = load_autoencoder(codec["kind"], codec.get("path", ""), device=device or "cpu", pixel_patch=patch)
    wanted: dict[Path, set[int]] = {}
    for shard, row in items:
        wanted.setdefault(shard, set()).add(row)
    for shard, rows in wanted.items():
        meta = schema.read_shard_meta(shard)
        for i, sample in enumerate(schema.iter_samples(shard)):
            if i not in rows:
                continue
            latent = recompose([x[None].to(ae.device) for x in sample.levels], meta.factors, meta.temporal_mode)
            frames = torch.from_numpy(to_uint8(ae.decode(latent)[0]))
            if frames.shape[0] < num_frames:
                raise ValueError(
                    f"{shard}: clip '{sample.key}' has {frames.shape[0]} "
                    f"frames but {num_frames} are needed per clip (--frames)"
                )
            yield _crop(frames[:num_frames], size)


def _check_dir(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if (
        path.is_file()
        and path.suffix == ".parquet"
        or (path.is_dir() and not is_shard_dataset(path) and next(path.rglob("*.parquet"), None))
    ):
        raise ValueError(
            f"{path}: holds *.parquet files but is not a dataset directory (manifest.json + shards/); "
            "pass the data_pipeline.preprocess output directory itself, or a folder of video files"
        )
    if not path.is_dir():
        raise ValueError(f"{path}: expected a folder of video files ({', '.join(VIDEO_EXTENSIONS)})")


def _is_media(p: Path) -> bool:
    return p.is_file() and media_kind(p)[0] != ""


def _sample_index(p: Path) -> int:
    return int(p.name.split("_")[1])


def list_videos(path: str | Path) -> list[Path]:
    """Media files under `path`: a sampling folder's `sample_*` files by index, the samples a
    `samples.json` lists, else every video or image file (recursive) sorted by relative path;
    ValueError if none."""
    root = Path(path).expanduser()
    _check_dir(root)
    if (root / SAMPLING_RECORD).is_file():
        files = sorted((p for p in root.glob("sample_*") if _is_media(p)), key=_sample_index)
    elif (root / SAMPLES_REPORT).is_file():
        files = sorted(
            (root / Path(p).name for p in json.loads((root / SAMPLES_REPORT).read_text())["samples"]),
            key=lambda p: p.name,
        )
    else:
        files, ignored = [], []
        for p in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
            kind, why = media_kind(p, root)
            if kind:
                files.append(p)
            else:
                ignored.append(f"{p.relative_to(root).as_posix()} ({why})")
        if ignored:
            log.warning("%s: %d file(s) are not media and are left out: %s", root, len(ignored), ", ".join(ignored))
    if not files:
        raise ValueError(
            f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) or images ({', '.join(IMAGE_EXTENSIONS)}) found"
        )
    return files


def _crop(frames: Tensor, size: Optional[tuple[int, int]]) -> Tensor:
    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return torch.from_numpy(resize_crop(frames.numpy(), size))


def read_video(
    path: str | Path, num_frames: int, fps: Optional[float] = None, size: Optional[tuple[int, int]] = None
) -> Tensor:
    """`num_frames` frames of one video (or a one-frame image) as uint8 (num_frames, H, W, 3), RGB.

    Without `fps`: the first `num_frames` frames. With `fps`: the frames whose timestamps are nearest
    to times k / fps (a stream slower than `fps` is an error). Rotation applied. With `size`: resized
    to cover it and centre-cropped. The training clips' rules (`dfm_video.media.read_clip_pyav`).

    Raises:
        ValueError: unreadable file, or fewer frames than needed (names both counts).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if Path(path).suffix.lower() in IMAGE_EXTENSIONS:
        if num_frames != 1:
            raise ValueError(f"{path}: is an image, so clips have 1 frame; use --frames 1 (got {num_frames})")
        try:
            with Image.open(path) as im:
                return _crop(torch.from_numpy(np.array(im.convert("RGB"))[None]), size)
        except OSError as e:
            raise ValueError(f"{path}: cannot read image ({e})") from e
    try:
        frames, _, _ = read_clip_pyav(str(path), num_frames, fps)
    except ClipError as e:
        if e.reason == "too short":
            at = f" at {fps} fps ({(num_frames - 1) / fps:.3f} s of video)" if fps is not None else ""
            raise ValueError(
                f"{path}: has {e.decoded} frames but {num_frames} are needed "
                f"per clip{at} (--frames); all videos must have at least that many"
            ) from e
        if e.reason in ("unreadable", "decode error"):
            raise ValueError(f"{path}: cannot decode video ({e.detail})") from e
        raise ValueError(f"{e.detail} (--fps)" if e.reason == "fps below target" else e.detail) from e
    return _crop(torch.from_numpy(frames), size)


def balanced_order(items: Sequence, classes: Sequence) -> list:
    """Items round-robin over their sorted classes (each class keeps its own order)."""
    groups: dict = {}
    for it, c in zip(items, classes):
        groups.setdefault(c, []).append(it)
    ordered = [groups[c] for c in sorted(groups, key=str)]
    return [g[k] for k in range(max((len(g) for g in ordered), default=0)) for g in ordered if k < len(g)]


def _draw(items: list, classes: list, num: Optional[int], where: str) -> list:
    picked = balanced_order(items, classes)
    if num is None:
        return picked
    counts: dict = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    if len(counts) > 1 and num > len(counts) * min(counts.values()):
        small = min(counts, key=lambda c: counts[c])
        log.warning(
            "%s: --num %d over %d classes is not class-balanced: class '%s' has only %d items",
            where,
            num,
            len(counts),
            small,
            counts[small],
        )
    return picked[:num]


def iter_items(
    path: str | Path, items: Sequence, spec: ClipSpec, device: Optional[torch.device] = None
) -> Iterator[Tensor]:
    """Clips of already selected `items` (files, or (shard, row) pairs of a dataset), in order."""
    if items and isinstance(items[0], tuple):
        yield from _decode_shard_clips(list(items), Path(path).expanduser(), spec.num_frames, device, spec.size)
        return
    for f in items:
        yield read_video(f, spec.num_frames, spec.fps, spec.size)


def iter_videos(
    path: str | Path,
    num: int | None,
    num_frames: int,
    fps: Optional[float] = None,
    size: Optional[tuple[int, int]] = None,
    device: Optional[torch.device] = None,
) -> Iterator[Tensor]:
    """Yield `num` clips (all if None) from an input, each uint8 (num_frames, H, W, 3).

    Sizes may differ between videos without `size`; the feature networks resize each one. The
    count check happens before any decoding, so a too-small set fails fast.
    """
    yield from iter_items(path, select_videos(path, num), ClipSpec(num_frames, fps, size), device)


def select_videos(path: str | Path, num: int | None) -> list:
    """`num` (all if None) videos of an input drawn class-balanced: file paths, or (shard, row)
    pairs for a preprocessed dataset; ValueError if there are fewer."""
    root = Path(path).expanduser()
    if num is not None and num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if is_shard_dataset(root):
        files, classes = _shard_items(root)
    else:
        files = list_videos(path)
        flat = (root / SAMPLING_RECORD).is_file()  # samples are balanced by index already
        classes = ["" if flat else f.parent.relative_to(root).as_posix() for f in files]
    if not files:
        raise ValueError(f"{root}: no clips found")
    if num is not None and len(files) < num:
        raise ValueError(f"{path}: {num} videos requested (--num) but only {len(files)} found")
    return _draw(files, classes, num, str(path))


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
