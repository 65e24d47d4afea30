"""`preprocess.decoder` torchcodec / torchcodec_cuda: frames equal to PyAV's and decord's, a missing
package named before any work, the GPU decoder refused where no GPU decodes.

torchcodec is optional: its CPU build (0.13, shared/PLATFORM_NOTES.md) needs FFmpeg's shared
libraries (Debian: libavcodec59 libavformat59 libavfilter8 libavdevice59 libswscale6 ...); where it is
not importable the equality tests skip with that reason, the error-path tests run either way."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import frame_index_of, write_synthetic
from pipeline_helpers import tiny_config

from data_pipeline.decode import DecodeParams, decode_clip, import_torchcodec
from data_pipeline.demo_clips import cut_clip, source_videos
from data_pipeline.resources import check_config

REPO = Path(__file__).resolve().parents[1]


def _torchcodec_missing() -> str:
    try:
        import_torchcodec()
    except ImportError as exc:
        return str(exc)
    return ""


needs_torchcodec = pytest.mark.skipif(bool(_torchcodec_missing()), reason=f"torchcodec: {_torchcodec_missing()}")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real footage (bikes, 640x272 native, and a resized cut) and a variable-frame-rate file."""
    folder = tmp_path_factory.mktemp("tc")
    cut = folder / "bikes_cut.mp4"
    cut_clip(source_videos()["bikes"], cut, 1.0, 2.0, size=(160, 96))
    pts, t = [], 0
    for i in range(30):  # bursts 20 ms apart, then 110 ms gaps
        pts.append(t)
        t += 20 if i % 3 else 110
    vfr = write_synthetic(folder / "vfr.mkv", pts, Fraction(1, 1000), fmt="matroska")
    return [Path(source_videos()["bikes"]), cut, vfr]


@needs_torchcodec
def test_torchcodec_on_the_cpu_gives_pyav_and_decord_frames_exactly(clips) -> None:
    params = DecodeParams(9, 8.0, (64, 64), "torchcodec")
    for path in clips:
        got = decode_clip(str(path), False, params)
        assert got.decoder == "torchcodec"
        for ref_decoder in ("pyav", "decord"):
            ref = decode_clip(str(path), False, DecodeParams(9, 8.0, (64, 64), ref_decoder))
            assert got.indices == ref.indices and got.source_fps == pytest.approx(ref.source_fps)
            assert np.array_equal(got.frames, ref.frames), f"{path.name}: torchcodec vs {ref_decoder}"
    vfr = decode_clip(str(clips[2]), False, params)
    assert [frame_index_of(f) for f in vfr.frames] == vfr.indices  # picked by timestamp, pixels of those frames


@needs_torchcodec
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torchcodec_cuda decodes on a GPU (NVDEC)")
def test_torchcodec_cuda_frames_equal_pyav_within_the_codec_rounding(clips) -> None:
    """NVDEC's YUV -> RGB conversion differs from FFmpeg's by a few levels (torchcodec's own tests
    allow 3 with CUDA 13); the antialiased resize averages, plus at most one level of rounding: 4."""
    for path in clips:
        got = decode_clip(str(path), False, DecodeParams(9, 8.0, (64, 64), "torchcodec_cuda"))
        ref = decode_clip(str(path), False, DecodeParams(9, 8.0, (64, 64), "pyav"))
        assert got.decoder == "torchcodec_cuda" and got.indices == ref.indices
        diff = np.abs(got.frames.astype(np.int16) - ref.frames.astype(np.int16))
        assert diff.max() <= 4, f"{path.name}: max |torchcodec_cuda - pyav| = {diff.max()}"


def test_a_missing_torchcodec_is_named_before_any_work(tmp_path) -> None:
    """A Python that cannot import torchcodec (blocked in a child, installed or not here)."""
    code = (
        "import sys; sys.modules['torchcodec'] = None\n"
        "sys.path.insert(0, 'tests')\n"
        "from pipeline_helpers import tiny_config\n"
        "from data_pipeline.resources import check_config\n"
        f"cfg = tiny_config({str(tmp_path / 'o')!r}, {str(tmp_path)!r}, 'preprocess.decoder=torchcodec')\n"
        "try:\n    check_config(cfg.preprocess)\nexcept ValueError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "ERR preprocess.decoder='torchcodec'" in out.stdout and "needs the package torchcodec" in out.stdout, (
        out.stdout + out.stderr
    )


def test_the_gpu_decoder_needs_the_fused_layout_on_a_gpu(tmp_path) -> None:
    for overrides in (["preprocess.layout=split", "preprocess.encode_gpus=1"], ["preprocess.layout=fused"]):
        cfg = tiny_config(tmp_path / "o", tmp_path, "preprocess.decoder=torchcodec_cuda", *overrides)
        with pytest.raises(
            ValueError, match="torchcodec_cuda' decodes on the encoder's GPU: it needs preprocess.layout"
        ):
            check_config(cfg.preprocess)
