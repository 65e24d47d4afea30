"""One media rule for preprocessing and evaluation: which files are media (and every other file
reported with its reason), and how a real clip is cut (timestamps, rotation, resize/crop), on
real files: a variable-frame-rate clip, a rotated clip, an MPEG-PS .mpg, a text file, a hidden file."""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest
from media_helpers import frame_index_of, write_synthetic
from pipeline_helpers import tiny_config

from data_pipeline.decode import DecodeParams, decode_clip
from data_pipeline.sources import build_sources
from dfm_video.eval.videos import list_videos, read_video

TB = Fraction(1, 1000)


def test_evaluation_cuts_a_vfr_clip_by_timestamps_like_training(tmp_path) -> None:
    # bursts 20 ms apart, then 110 ms gaps: the average rate (~15 fps) says nothing about frame k's time
    pts, t = [], 0
    for i in range(30):
        pts.append(t)
        t += 20 if i % 3 else 110
    path = write_synthetic(tmp_path / "vfr.mkv", pts, TB, fmt="matroska")
    train = decode_clip(str(path), False, DecodeParams(9, 8.0, (32, 32), "pyav"))
    real = read_video(path, 9, fps=8.0, size=(32, 32)).numpy()
    assert np.array_equal(real, train.frames)
    full = read_video(path, 9, fps=8.0).numpy()
    assert [frame_index_of(f) for f in full] == train.indices  # the frames nearest to k / 8 s


def test_evaluation_applies_rotation_like_training(tmp_path) -> None:
    path = write_synthetic(tmp_path / "rot.mp4", list(range(0, 30 * 40, 40)), TB, size=(48, 64), rotation=90)
    full = read_video(path, 9, fps=8.0).numpy()
    assert full.shape == (9, 64, 48, 3)  # displayed portrait: 48 wide, 64 high
    train = decode_clip(str(path), False, DecodeParams(9, 8.0, (32, 32), "pyav"))
    assert np.array_equal(read_video(path, 9, fps=8.0, size=(32, 32)).numpy(), train.frames)
    assert read_video(path, 4).shape == (4, 64, 48, 3)  # also without --fps


def test_one_media_rule_and_every_other_file_reported(tmp_path, caplog) -> None:
    clips = tmp_path / "clips"
    write_synthetic(clips / "a" / "one.mp4", list(range(0, 30 * 40, 40)), TB)
    write_synthetic(clips / "a" / "two.mpg", list(range(30)), Fraction(1, 25), codec="mpeg2video", fmt="mpeg")
    (clips / "b").mkdir()
    (clips / "b" / "notes.txt").write_text("not a video\n")
    (clips / "b" / ".hidden.mp4").write_bytes((clips / "a" / "one.mp4").read_bytes())
    with caplog.at_level(logging.WARNING, logger="dfm_video.eval.videos"):
        files = list_videos(clips)
    used = [p.relative_to(clips).as_posix() for p in files]
    assert used == ["a/one.mp4", "a/two.mpg"]
    assert "2 file(s) are not media and are left out" in caplog.text
    assert "b/notes.txt (not a video or image (.txt))" in caplog.text and "b/.hidden.mp4 (hidden file)" in caplog.text
    # preprocessing takes exactly the same files (and counts the others)
    sources = build_sources(tiny_config(tmp_path / "out", clips).preprocess)
    assert sorted(it.key for it in sources.items) == used and sources.ignored == {".txt": 1, "(hidden)": 1}
    assert read_video(files[1], 9, fps=8.0).shape[0] == 9  # and the .mpg reads


@pytest.mark.parametrize("name", ["clip.xyz"])
def test_an_unknown_extension_is_tried_as_video_and_named_when_unreadable(tmp_path, name) -> None:
    (tmp_path / name).write_bytes(b"not a container")
    assert [p.name for p in list_videos(tmp_path)] == [name]
    with pytest.raises(ValueError, match=f"{name}: cannot decode video"):
        read_video(tmp_path / name, 4)
