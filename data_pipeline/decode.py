"""Stage 1 (Ray tasks): decode a clip, sample frames at the target fps, resize and centre-crop.

Frame sampling (documented choice): output frame k is the source frame whose presentation
timestamp is nearest to time k / fps, counted from the first frame of the file (Kinetics files
already hold just the annotated segment); ties go to the later frame, which on constant-rate files
is index_k = floor(k * source_fps / fps + 0.5). Timestamps, not frame indices x average fps, so
variable-frame-rate files sample correctly; container frame counts are never trusted (decoding
stops after the last needed time). A clip whose frames end before the last target time is
rejected ("too short"), a stream slower than the target fps is rejected ("fps below target"):
frames are never looped, padded or duplicated. Rotation metadata (display matrix) is applied,
so a phone's portrait clip is portrait before the resize and crop.

Resize: the shorter side (more precisely: the side that needs the larger scale) goes to the
target, then a centre crop to (H, W). Bilinear with antialiasing on uint8 frames (torch's
`interpolate(..., antialias=True)`), so downscaling does not alias.

Decoders: decord (default) or PyAV. When decord cannot read a file, PyAV is tried; both return
bit-identical RGB frames (measured, shared/PLATFORM_NOTES.md), so the fallback changes only which
library ran: it is logged once per worker and counted in the run summary. Rotated files go to
PyAV directly (decord ignores rotation and fails on 90-degree files). Any container FFmpeg reads
(.mpg, .ogv, .ts, .flv, .wmv, .3gp, ...) decodes: decord first, PyAV when decord refuses it.

Every failure becomes a reject (stage "decode", a short reason, the full message); a bad file
never stops the job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from dfm_video.config.schema import PreprocessConfig

# One rule for training clips and evaluation clips: the timestamp frame pick, the rotation, the
# PyAV reader and the resize/crop live in dfm_video.media, which the evaluation reader uses too.
from dfm_video.media import ClipError as ClipRejected  # a readable-but-unusable (or unreadable) file
from dfm_video.media import (  # noqa: F401  (some re-exported)
    check_rate,
    pick_by_time,
    read_clip_pyav,
    resize_crop,
    rotate_frames,
    sample_indices,
    target_times,
)

log = logging.getLogger(__name__)
_fallback_logged = False


@dataclass(frozen=True)
class DecodeParams:
    num_frames: int  # frames per clip (1 for images)
    fps: float  # target rate of the sampled frames
    resolution: tuple[int, int]  # (H, W) after resize + crop
    decoder: str  # "decord" | "pyav"
    threads: int = 1
    fault_hook: str = ""  # tests only: see data_pipeline.isolate (from DFM_TEST_DECODE_HOOK)

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> "DecodeParams":
        frames = 1 if cfg.input_type == "images" else cfg.num_frames
        return cls(
            frames,
            cfg.fps,
            tuple(cfg.resolution),
            cfg.decoder,
            cfg.decode_threads,
            os.environ.get("DFM_TEST_DECODE_HOOK", ""),
        )


class TransientIOError(Exception):
    """Reading the file failed in a way that may succeed later (network filesystem hiccup): retried."""


@dataclass
class Decoded:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, already resized and cropped
    indices: list[int]  # presentation-order index of the source frame of each sampled frame
    source_fps: float
    decoder: str
    source_hw: tuple[int, int] = (0, 0)  # displayed size of the source (after rotation)


def check_file(path: str) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ClipRejected("missing file", f"{path}: file listed but missing") from None
    except OSError as exc:
        raise TransientIOError(f"{path}: {exc}") from exc
    if size == 0:
        raise ClipRejected("empty file", f"{path}: zero-byte file")


def probe_pyav(path: str) -> tuple[float | None, int]:
    """(average frame rate, display rotation) from the header and the first decoded frame."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ClipRejected("no video stream", f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):
                return fps, int(frame.rotation or 0)
            return fps, 0
    except ClipRejected:
        raise
    except Exception as exc:
        raise ClipRejected("unreadable", f"{path}: not a readable media file: {exc}") from exc


def read_decord(path: str, p: DecodeParams) -> tuple[np.ndarray, list[int], float]:
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=p.threads)
    except Exception as exc:  # decord raises RuntimeError/DECORDError for anything unreadable
        raise ClipRejected("unreadable", f"{path}: decord cannot open it: {exc}") from exc
    fps = check_rate(path, vr.get_avg_fps(), p.fps)
    try:
        # start times of every frame decord indexed (from the packets, not the header's count)
        starts = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0] if len(vr) else np.zeros(0)
    except Exception as exc:
        raise ClipRejected("decode error", f"{path}: decord has no frame timestamps: {exc}") from exc
    times = [Fraction(float(t)).limit_denominator(1_000_000) for t in starts]
    times = [t - times[0] for t in times] if times else times
    idx = pick_by_time(path, times, p.num_frames, p.fps)
    try:
        frames = vr.get_batch(idx).asnumpy()
    except Exception as exc:
        raise ClipRejected("decode error", f"{path}: decord failed while decoding: {exc}") from exc
    return frames, idx, fps


def read_pyav(path: str, p: DecodeParams) -> tuple[np.ndarray, list[int], float]:
    """Decode in presentation order up to the last target time; convert only the chosen frames."""
    return read_clip_pyav(path, p.num_frames, p.fps, p.threads)


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))[None]  # (1, H, W, 3), a writable copy
    except Exception as exc:
        raise ClipRejected("unreadable", f"{path}: not a readable image: {exc}") from exc


def decode_clip(path: str, is_image: bool, p: DecodeParams) -> Decoded:
    """Read, sample and resize one clip; `ClipRejected` for every kind of bad input."""
    global _fallback_logged
    check_file(path)
    if is_image:
        return Decoded(resize_crop(read_image(path), p.resolution), [0], 0.0, "pil")
    decoder = p.decoder
    if decoder == "decord":
        # decord ignores rotation metadata (and fails or garbles rotated files): those go to PyAV
        _, rotation = probe_pyav(path)
        if rotation:
            decoder = "pyav"
    if decoder == "decord":
        try:
            frames, idx, fps = read_decord(path, p)
        except ClipRejected as exc:
            if exc.reason not in ("unreadable", "decode error"):
                raise  # a verdict on the stream (too short, no fps): PyAV would say the same
            try:
                frames, idx, fps = read_pyav(path, p)
            except ClipRejected as exc2:
                raise ClipRejected(exc2.reason, f"{exc2.detail} (decord: {exc.detail})") from exc2
            decoder = "pyav-fallback"
            if not _fallback_logged:
                log.warning(
                    "decord could not read %s; PyAV decoded it (identical frames, slower): %s", path, exc.detail
                )
                _fallback_logged = True
    else:
        frames, idx, fps = read_pyav(path, p)
    return Decoded(resize_crop(frames, p.resolution), idx, fps, decoder, (int(frames.shape[1]), int(frames.shape[2])))


def decode_batch(
    batch: dict[str, np.ndarray], params: DecodeParams, isolation: Any = None, workers: int = 1
) -> dict[str, np.ndarray]:
    """Ray Data stage: clip items -> items + frames (N, F, H, W, 3) uint8 + sampling + reject info.

    With `isolation` (`data_pipeline.isolate.IsolationSettings`) every clip is decoded in a child
    process (`workers` at once) that a hang or a crash cannot take down; without it, in this process.
    Rejected rows keep zero frames and carry stage/reason/detail; they flow on to the workers that
    write the shards, which record them (one stream keeps every clip accounted for).
    """
    n = len(batch["key"])
    fcount, (h, w) = params.num_frames, params.resolution
    frames = np.zeros((n, fcount, h, w, 3), dtype=np.uint8)
    indices = np.full((n, fcount), -1, dtype=np.int32)
    out: dict[str, Any] = {k: batch[k] for k in ("key", "path", "label", "label_id", "split", "is_image")}
    fps = np.zeros(n, dtype=np.float32)
    src_h, src_w = np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32)
    decoder, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    items = [(str(batch["path"][i]), bool(batch["is_image"][i])) for i in range(n)]
    if isolation is not None:
        from data_pipeline.isolate import shared_pool

        results = shared_pool(isolation, workers, params.threads).decode_many(items, params)
    else:
        results = [_decode_or_reject(path, is_image, params) for path, is_image in items]
    for i, clip in enumerate(results):
        if isinstance(clip, ClipRejected):
            stage[i], reason[i], detail[i] = "decode", clip.reason, clip.detail
            continue
        frames[i], indices[i], fps[i], decoder[i] = clip.frames, clip.indices, clip.source_fps, clip.decoder
        src_h[i], src_w[i] = clip.source_hw
    out.update(
        frames=frames,
        frame_indices=indices,
        source_fps=fps,
        source_height=src_h,
        source_width=src_w,
        decoder=np.array(decoder, dtype=object),
        stage=np.array(stage, dtype=object),
        reason=np.array(reason, dtype=object),
        detail=np.array(detail, dtype=object),
    )
    return out


def _decode_or_reject(path: str, is_image: bool, params: DecodeParams) -> Decoded | ClipRejected:
    try:
        return decode_clip(path, is_image, params)
    except ClipRejected as exc:
        return exc
    except TransientIOError as exc:
        return ClipRejected("I/O error", str(exc))
    except Exception as exc:  # an unforeseen decoder error is still a bad clip, not a dead job
        return ClipRejected("decode error", f"{path}: {type(exc).__name__}: {exc}")
