"""Writing generated media: mp4 (PyAV, libx264), PNG frames and contact sheets.

Frames are uint8 (T, H, W, 3). Conversion from the autoencoder's [-1, 1] happens in `to_uint8`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Sequence

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
