"""Media rules shared by preprocessing, evaluation and sampling, so that all three agree:

- which files are media (`media_kind`: one extension rule for preprocessing's input folders and
  evaluation's --real / --fake folders; a file that is neither is reported with its reason);
- how a clip is cut from a video (`read_clip_pyav`, `pick_by_time`): frame k is the frame whose
  presentation timestamp is nearest to k / fps (variable frame rates sample correctly), the
  display rotation is applied, and a stream too short or too slow is an error, never padded;
- how frames are scaled (`resize_crop`: cover, then centre crop);
- writing generated media: mp4 (PyAV, libx264), PNG frames and contact sheets.

Frames are uint8 (T, H, W, 3). Conversion from the autoencoder's [-1, 1] happens in `to_uint8`.
"""

from __future__ import annotations

import bisect
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


def to_uint8(video: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 (values outside [-1, 1] are clipped)."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Encode (T, H, W, 3) uint8 frames as H.264; 4:2:0 when H and W are even (widely playable), else 4:4:4."""
    import av  # here, not at the top: the sampler's model code also runs on GPU images without PyAV (no Pillow either)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    # the temp name ends in .partial so no video lister ever picks up a half-written file
    tmp = path.with_name(path.name + ".partial")
    with av.open(str(tmp), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        stream.options = {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write one (H, W, 3) uint8 image atomically (a temp file renamed into place)."""
    from PIL import Image  # lazily, like av: GPU images may lack Pillow

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def contact_sheet(videos: Sequence[np.ndarray], max_frames: int = 8, scale: int = 1) -> np.ndarray:
    """One row per video, up to `max_frames` evenly spaced frames per row, 2-pixel gaps."""
    h = max(v.shape[1] for v in videos) * scale
    w = max(v.shape[2] for v in videos) * scale
    cols = min(max_frames, max(v.shape[0] for v in videos))
    gap = 2
    sheet = np.full((len(videos) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, v in enumerate(videos):
        idx = np.linspace(0, v.shape[0] - 1, num=min(cols, v.shape[0])).round().astype(int)
        for c, i in enumerate(idx):
            frame = v[i].repeat(scale, axis=0).repeat(scale, axis=1)
            y0, x0 = r * (h + gap), c * (w + gap)
            sheet[y0 : y0 + frame.shape[0], x0 : x0 + frame.shape[1]] = frame
    return sheet


def sample_indices(source_fps: float, num_frames: int, fps: float) -> list[int]:
    """Source frame nearest to each target time k / fps, k = 0..num_frames-1 (index_k = floor(k * src / fps + 0.5)).

    The rule data_pipeline.decode samples training clips with, so real evaluation clips are
    timed like the data the model learnt from (tests/test_eval_prepare.py checks both agree)."""
    step = source_fps / fps
    return [int(math.floor(k * step + 0.5)) for k in range(num_frames)]


def resize_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(F, h, w, 3) uint8 -> (F, H, W, 3) uint8: scale so both sides cover (H, W) (bilinear, antialiased),
    then centre crop: data_pipeline.decode's rule for training clips."""
    import torch.nn.functional as F

    th, tw = size
    _, h, w, _ = frames.shape
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(x[:, :, top : top + th, left : left + tw].permute(0, 2, 3, 1).numpy())


# Containers seen in video datasets, all read by FFmpeg. Any other extension that is not clearly
# non-media (NON_MEDIA_EXTENSIONS) is also tried as a video, so an unusual container is decoded or
# rejected with its reason, never skipped.
VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ogv",
    ".ogg",
    ".ts",
    ".mts",
    ".m2ts",
    ".flv",
    ".wmv",
    ".asf",
    ".3gp",
    ".3g2",
    ".vob",
    ".mxf",
    ".y4m",
    ".dv",
    ".gif",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Extensions that are never video or a supported image: ignored (and reported) rather than tried.
NON_MEDIA_EXTENSIONS = (
    ".txt",
    ".md",
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".yaml",
    ".yml",
    ".xml",
    ".html",
    ".pdf",
    ".log",
    ".srt",
    ".vtt",
    ".ass",
    ".sub",
    ".nfo",
    ".py",
    ".sh",
    ".zip",
    ".tar",
    ".gz",
    ".tgz",
    ".part",
    ".partial",
    ".tmp",
    ".db",
    ".parquet",
    ".wav",
    ".mp3",
    ".flac",
    ".aac",
    ".m4a",
    ".opus",
    ".tif",
    ".tiff",
    ".heic",
)


def media_kind(path: Path, root: Optional[Path] = None) -> tuple[str, str]:
    """("video" | "image", "") for a media file, ("", why it is ignored) otherwise.

    Hidden files (any part of the path below `root` starting with ".") are ignored; image
    extensions are images; NON_MEDIA_EXTENSIONS are ignored; everything else is a video."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    if any(part.startswith(".") for part in parts):
        return "", "hidden file"
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return "image", ""
    if ext in NON_MEDIA_EXTENSIONS:
        return "", f"not a video or image ({ext})"
    return "video", ""


class ClipError(ValueError):
    """A file that cannot give the clip asked for: `reason` is a short category ("too short",
    "fps below target", ...), `detail` the full message naming the file; `decoded` counts the
    frames that were read (for messages)."""

    def __init__(self, reason: str, detail: str, decoded: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.decoded = decoded

    def __reduce__(self) -> tuple:  # crosses process boundaries (decoder children, Ray workers)
        return (type(self), (self.reason, self.detail, self.decoded))


def target_times(num_frames: int, fps: float) -> list[Fraction]:
    return [Fraction(k) / Fraction(fps) for k in range(num_frames)]


def check_rate(path: str, source_fps: float | None, fps: float) -> float:
    """The stream's average rate; ClipError when it has none or is slower than `fps` (frames are never repeated)."""
    if source_fps is None or not math.isfinite(source_fps) or source_fps <= 0:
        raise ClipError("no frame rate", f"{path}: the video stream has no usable frame rate ({source_fps})")
    if source_fps < fps * (1 - 1e-3):
        raise ClipError("fps below target", f"{path}: stream is {source_fps:.3f} fps, below the target {fps} fps")
    return float(source_fps)


def pick_by_time(path: str, times: Sequence[Fraction], num_frames: int, fps: float) -> list[int]:
    """Index (presentation order) of the frame nearest to each target time k / fps, from the
    presentation timestamps `times` (relative to the first frame; ties go to the later frame, which
    reproduces `sample_indices` on constant-rate files). A target later than the last frame plus
    half a frame interval is "too short": container frame counts are never consulted."""
    if len(times) == 0:
        raise ClipError("too short", f"{path}: no decodable frame")
    half = (times[-1] - times[0]) / (2 * (len(times) - 1)) if len(times) > 1 else Fraction(0)
    out = []
    for t in target_times(num_frames, fps):
        if t >= times[-1] + half and not (len(times) == 1 and t == 0):
            raise ClipError(
                "too short",
                f"{path}: {num_frames} frames at {fps} fps need {float(t):.3f} s of video, the stream's frames "
                f"span {float(times[-1]):.3f} s ({len(times)} frames decoded)",
                len(times),
            )
        j = bisect.bisect_left(times, t)
        if j == len(times) or (j > 0 and t - times[j - 1] < times[j] - t):
            j -= 1
        out.append(j)
    return out


def rotate_frames(frames: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it) to (F, H, W, 3)."""
    k = int(round(degrees / 90)) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def read_clip_pyav(
    path: str, num_frames: int, fps: Optional[float], threads: int = 1
) -> tuple[np.ndarray, list[int], float]:
    """(frames (F, H, W, 3) uint8 RGB, displayed orientation; presentation-order indices; average fps).

    With `fps`: the frames nearest to times k / fps (`pick_by_time`). Without: the first
    `num_frames` presentation instants. Decodes only up to the last needed frame and keeps only the
    chosen ones (bounded memory). Repeated or out-of-order timestamps are not new instants; raw
    streams without timestamps are taken as one average interval apart. ClipError for every
    unusable file."""
    import av  # lazily: sampling also runs on GPU images without PyAV

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise ClipError("unreadable", f"{path}: not a readable media file: {exc}") from exc
    with container:
        if not container.streams.video:
            raise ClipError("no video stream", f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = threads
        avg = float(stream.average_rate) if stream.average_rate else None
        src = check_rate(path, avg, fps) if fps is not None else (avg or 0.0)
        targets = target_times(num_frames, fps) if fps is not None else None
        times: list[Fraction] = []
        kept: dict[int, Any] = {}  # frames chosen so far plus the latest one (bounded memory)
        chosen: set[int] = set()
        rotation, k = 0, 0
        try:
            step = 1 / Fraction(src).limit_denominator(1_000_000) if src > 0 else Fraction(1, 25)
            raw = None
            for frame in container.decode(stream):
                raw = (
                    Fraction(frame.pts) * frame.time_base
                    if frame.pts is not None
                    else (raw + step if raw is not None else Fraction(0))
                )
                if not times:
                    t0, rotation = raw, int(frame.rotation or 0)
                t = raw - t0
                if times and t <= times[-1]:
                    continue  # a repeated or out-of-order timestamp: not a new presentation instant
                j = len(times)
                times.append(t)
                if targets is None:
                    kept[j] = frame
                    if len(times) == num_frames:
                        break
                    continue
                # targets between the previous frame and this one are decided now (the rule of pick_by_time)
                while k < len(targets) and targets[k] <= t:
                    chosen.add(j - 1 if j > 0 and targets[k] - times[j - 1] < t - targets[k] else j)
                    k += 1
                if j - 1 not in chosen:
                    kept.pop(j - 1, None)
                kept[j] = frame
                if k == len(targets):
                    break
        except Exception as exc:
            raise ClipError("decode error", f"{path}: PyAV failed after {len(times)} frames: {exc}") from exc
        if targets is None:
            if len(times) < num_frames:
                raise ClipError("too short", f"{path}: {len(times)} frames decoded, {num_frames} needed", len(times))
            idx = list(range(num_frames))
        else:
            idx = pick_by_time(path, times, num_frames, fps)
        frames = np.stack([kept[i].to_ndarray(format="rgb24") for i in idx])
        return rotate_frames(frames, rotation), idx, src
