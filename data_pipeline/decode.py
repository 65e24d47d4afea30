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

Decoders: decord (default), PyAV, or torchcodec (optional package) on the CPU or on the GPU
(`torchcodec_cuda`, NVDEC). When decord or torchcodec cannot read a file, PyAV is tried; decord,
torchcodec on the CPU and PyAV return bit-identical RGB frames (measured, shared/PLATFORM_NOTES.md
and tests/test_decode_torchcodec.py; NVDEC within a few levels), so the fallback changes only
which library ran: it is logged once per worker and counted in the run summary. Rotated files go
to PyAV directly (decord ignores rotation and fails on 90-degree files; torchcodec is not relied
on for it). Any container FFmpeg reads
(.mpg, .ogv, .ts, .flv, .wmv, .3gp, ...) decodes: decord first, PyAV when decord refuses it.

Every failure of a readable-but-unusable file is a `ClipRejected` (a short reason, the full
message); `data_pipeline.isolate` runs `decode_clip` in a child process and turns every other
failure (a crash, a hang, an exception) into a reject too, so a bad file never stops the job.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from dfm_video.config.schema import Config, PreprocessConfig

# One rule for training clips and evaluation clips: the timestamp frame pick, the rotation, the
# PyAV reader and the resize/crop live in dfm_video.media, which the evaluation reader uses too.
from dfm_video.media import ClipError as ClipRejected  # a readable-but-unusable (or unreadable) file
from dfm_video.media import check_rate, pick_by_time, read_clip_pyav, resize_crop

log = logging.getLogger(__name__)
_fallback_logged = False


def with_available_decoder(cfg: Config) -> Config:
    """`cfg` with preprocess.decoder = "pyav" where decord is not installed (it has no wheel on some
    platforms, e.g. aarch64), else `cfg` itself. PyAV gives bit-identical frames; the switch is
    logged and the dataset's stored config names the decoder that ran."""
    if cfg.preprocess.decoder != "decord" or importlib.util.find_spec("decord") is not None:
        return cfg
    log.warning("preprocess.decoder: decord is not installed here; using PyAV (bit-identical frames)")
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, decoder="pyav"))


@dataclass(frozen=True)
class DecodeParams:
    num_frames: int  # frames per clip (1 for images)
    fps: float  # target rate of the sampled frames
    resolution: tuple[int, int]  # (H, W) after resize + crop
    decoder: str  # "decord" | "pyav" | "torchcodec" | "torchcodec_cuda"
    threads: int = 1

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> "DecodeParams":
        frames = 1 if cfg.input_type == "images" else cfg.num_frames
        return cls(frames, cfg.fps, tuple(cfg.resolution), cfg.decoder, cfg.decode_threads)


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


def import_torchcodec() -> Any:
    """The optional GPU/FFmpeg decoder package; an ImportError naming it when it is not installed."""
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:  # ImportError, or its FFmpeg libraries missing (RuntimeError/OSError)
        raise ImportError(
            f"preprocess.decoder=torchcodec/torchcodec_cuda needs the package torchcodec with FFmpeg 4-7 shared "
            f"libraries (pip install torchcodec: a CUDA build of torch for torchcodec_cuda, the 0.13 CPU build for "
            f"torchcodec); importing it failed: {exc}"
        ) from exc
    return VideoDecoder


def read_torchcodec(path: str, p: DecodeParams, device: str) -> tuple[np.ndarray, list[int], float]:
    """torchcodec on `device` ("cpu", or "cuda": NVDEC); frames picked by time like the other readers.

    Presentation times come from the container's packets (PyAV demuxes, nothing is decoded), so the
    pick is the same rule on the same timestamps as decord's; torchcodec's exact seek mode indexes
    frames in presentation order. Frames return to the host as (F, H, W, 3) uint8."""
    import av

    VideoDecoder = import_torchcodec()
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ClipRejected("no video stream", f"{path}: the file has no video stream")
            stream = container.streams.video[0]
            fps = check_rate(path, float(stream.average_rate) if stream.average_rate else None, p.fps)
            pts = sorted({Fraction(pk.pts) * stream.time_base for pk in container.demux(stream) if pk.pts is not None})
    except ClipRejected:
        raise
    except Exception as exc:
        raise ClipRejected("unreadable", f"{path}: not a readable media file: {exc}") from exc
    idx = pick_by_time(path, [t - pts[0] for t in pts], p.num_frames, p.fps)
    try:
        dec = VideoDecoder(path, device=device, seek_mode="exact", dimension_order="NHWC")
        frames = dec.get_frames_at(indices=idx).data.cpu().numpy()
    except Exception as exc:
        raise ClipRejected("decode error", f"{path}: torchcodec ({device}) failed while decoding: {exc}") from exc
    return frames, idx, fps


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
    if decoder != "pyav":
        # decord ignores rotation metadata (and fails or garbles rotated files), torchcodec is not relied on for
        # it: rotated files go to PyAV
        _, rotation = probe_pyav(path)
        if rotation:
            decoder = "pyav"
    if decoder != "pyav":
        try:
            if decoder == "decord":
                frames, idx, fps = read_decord(path, p)
            else:
                frames, idx, fps = read_torchcodec(path, p, "cuda" if decoder == "torchcodec_cuda" else "cpu")
        except ClipRejected as exc:
            if exc.reason not in ("unreadable", "decode error"):
                raise  # a verdict on the stream (too short, no fps): PyAV would say the same
            try:
                frames, idx, fps = read_pyav(path, p)
            except ClipRejected as exc2:
                raise ClipRejected(exc2.reason, f"{exc2.detail} ({decoder}: {exc.detail})") from exc2
            if not _fallback_logged:
                log.warning("%s could not read %s; PyAV decoded it (equal frames): %s", decoder, path, exc.detail)
                _fallback_logged = True
            decoder = "pyav-fallback"
    else:
        frames, idx, fps = read_pyav(path, p)
    return Decoded(resize_crop(frames, p.resolution), idx, fps, decoder, (int(frames.shape[1]), int(frames.shape[2])))
