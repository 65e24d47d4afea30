"""Stage 1 (Ray tasks): decode a clip, sample frames at the target fps, resize and centre-crop.

Frame sampling (documented choice): output frame k is the source frame nearest to time k / fps,
counted from the first frame of the file (Kinetics files already hold just the annotated
segment): index_k = floor(k * source_fps / fps + 0.5). A clip without enough frames is rejected
("too short"), a stream slower than the target fps is rejected ("fps below target"): frames are
never looped, padded or duplicated.

Resize: the shorter side (more precisely: the side that needs the larger scale) goes to the
target, then a centre crop to (H, W). Bilinear with antialiasing on uint8 frames (torch's
`interpolate(..., antialias=True)`), so downscaling does not alias.

Decoders: decord (default) or PyAV. When decord cannot read a file, PyAV is tried; both return
bit-identical RGB frames (measured, shared/PLATFORM_NOTES.md), so the fallback changes only which
library ran: it is logged once per worker and counted in the run summary.

Every failure becomes a reject (stage "decode", a short reason, the full message); a bad file
never stops the job.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dfm_video.config.schema import PreprocessConfig

log = logging.getLogger(__name__)
_fallback_logged = False


@dataclass(frozen=True)
class DecodeParams:
    num_frames: int  # frames per clip (1 for images)
    fps: float  # target rate of the sampled frames
    resolution: tuple[int, int]  # (H, W) after resize + crop
    decoder: str  # "decord" | "pyav"
    threads: int = 1

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> "DecodeParams":
        frames = 1 if cfg.input_type == "images" else cfg.num_frames
        return cls(frames, cfg.fps, tuple(cfg.resolution), cfg.decoder, cfg.decode_threads)


class ClipRejected(Exception):
    """The file is readable but unusable (or unreadable): becomes a reject, never a crash."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, already resized and cropped
    indices: list[int]  # source frame index of each sampled frame
    source_fps: float
    decoder: str


def sample_indices(source_fps: float, num_frames: int, fps: float) -> list[int]:
    """Source frame nearest to each target time k / fps, k = 0..num_frames-1."""
    step = source_fps / fps
    return [int(math.floor(k * step + 0.5)) for k in range(num_frames)]


def plan_indices(path: str, source_fps: float | None, available: int | None, p: DecodeParams) -> list[int]:
    """Frame indices to read; `ClipRejected` when the stream cannot provide them."""
    if source_fps is None or not math.isfinite(source_fps) or source_fps <= 0:
        raise ClipRejected("no frame rate", f"{path}: the video stream has no usable frame rate ({source_fps})")
    if source_fps < p.fps * (1 - 1e-3):
        raise ClipRejected("fps below target", f"{path}: stream is {source_fps:.3f} fps, below the target {p.fps} fps")
    idx = sample_indices(source_fps, p.num_frames, p.fps)
    if available is not None and idx[-1] >= available:
        raise ClipRejected(
            "too short",
            f"{path}: {p.num_frames} frames at {p.fps} fps need {idx[-1] + 1} source frames at "
            f"{source_fps:.3f} fps, the stream has {available}",
        )
    return idx


def check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ClipRejected("missing file", f"{path}: file listed but missing")
    if os.path.getsize(path) == 0:
        raise ClipRejected("empty file", f"{path}: zero-byte file")


def read_decord(path: str, p: DecodeParams) -> tuple[np.ndarray, list[int], float]:
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=p.threads)
    except Exception as exc:  # decord raises RuntimeError/DECORDError for anything unreadable
        raise ClipRejected("unreadable", f"{path}: decord cannot open it: {exc}") from exc
    fps = vr.get_avg_fps()
    idx = plan_indices(path, fps, len(vr), p)
    try:
        frames = vr.get_batch(idx).asnumpy()
    except Exception as exc:
        raise ClipRejected("decode error", f"{path}: decord failed while decoding: {exc}") from exc
    return frames, idx, float(fps)


def read_pyav(path: str, p: DecodeParams) -> tuple[np.ndarray, list[int], float]:
    import av

    try:
        container = av.open(path)
    except Exception as exc:
        raise ClipRejected("unreadable", f"{path}: not a readable media file: {exc}") from exc
    with container:
        if not container.streams.video:
            raise ClipRejected("no video stream", f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = p.threads
        fps = float(stream.average_rate) if stream.average_rate else None
        # stream.frames is 0 for containers without an index: count while decoding instead.
        idx = plan_indices(path, fps, None, p)
        wanted, last = set(idx), idx[-1]
        got: dict[int, np.ndarray] = {}
        count = 0  # frames decoded so far
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    got[count] = frame.to_ndarray(format="rgb24")
                count += 1
                if count > last:
                    break
        except Exception as exc:
            raise ClipRejected("decode error", f"{path}: PyAV failed after {count} frames: {exc}") from exc
        if len(got) < len(wanted):
            plan_indices(path, fps, count, p)  # raises "too short" with the numbers
        return np.stack([got[i] for i in idx]), idx, float(fps)


def read_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))[None]  # (1, H, W, 3), a writable copy
    except Exception as exc:
        raise ClipRejected("unreadable", f"{path}: not a readable image: {exc}") from exc


def resize_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, h, w, 3) uint8 -> (F, H, W, 3) uint8: scale so both sides cover (H, W), then centre crop."""
    th, tw = size
    _, h, w, _ = frames.shape
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels_last view
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(x[:, :, top : top + th, left : left + tw].permute(0, 2, 3, 1).numpy())


def decode_clip(path: str, is_image: bool, p: DecodeParams) -> Decoded:
    """Read, sample and resize one clip; `ClipRejected` for every kind of bad input."""
    global _fallback_logged
    check_file(path)
    if is_image:
        return Decoded(resize_crop(read_image(path), p.resolution), [0], 0.0, "pil")
    decoder = p.decoder
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
                log.warning("decord could not read %s; PyAV decoded it (identical frames, slower): %s", path, exc.detail)
                _fallback_logged = True
    else:
        frames, idx, fps = read_pyav(path, p)
    return Decoded(resize_crop(frames, p.resolution), idx, fps, decoder)


def decode_batch(batch: dict[str, np.ndarray], params: DecodeParams) -> dict[str, np.ndarray]:
    """Ray Data stage: clip items -> items + frames (N, F, H, W, 3) uint8 + sampling + reject info.

    Rejected rows keep zero frames and carry stage/reason/detail; they flow on to the writer,
    which records them (one stream keeps every clip accounted for).
    """
    n = len(batch["key"])
    fcount, (h, w) = params.num_frames, params.resolution
    frames = np.zeros((n, fcount, h, w, 3), dtype=np.uint8)
    indices = np.full((n, fcount), -1, dtype=np.int32)
    out: dict[str, Any] = {k: batch[k] for k in ("key", "path", "label", "label_id", "split", "is_image")}
    fps = np.zeros(n, dtype=np.float32)
    decoder, stage, reason, detail = [""] * n, [""] * n, [""] * n, [""] * n
    for i in range(n):
        path = str(batch["path"][i])
        try:
            clip = decode_clip(path, bool(batch["is_image"][i]), params)
        except ClipRejected as exc:
            stage[i], reason[i], detail[i] = "decode", exc.reason, exc.detail
            continue
        except Exception as exc:  # an unforeseen decoder error is still a bad clip, not a dead job
            stage[i], reason[i], detail[i] = "decode", "decode error", f"{path}: {type(exc).__name__}: {exc}"
            continue
        frames[i], indices[i], fps[i], decoder[i] = clip.frames, clip.indices, clip.source_fps, clip.decoder
    out.update(frames=frames, frame_indices=indices, source_fps=fps, decoder=np.array(decoder, dtype=object),
               stage=np.array(stage, dtype=object), reason=np.array(reason, dtype=object),
               detail=np.array(detail, dtype=object))
    return out
