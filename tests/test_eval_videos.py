"""Reading evaluation inputs: mp4 folders into uint8 clips, and clear errors for bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import make_video_dir, source_frames

from dfm_video.eval.videos import iter_videos, list_videos, load_videos, read_video, select_videos
from dfm_video.media import write_mp4


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video_dir(tmp_path_factory.mktemp("videos"), num_videos=3, num_frames=6)


def test_load_videos_shape_dtype_and_content(video_dir: Path) -> None:
    clips = load_videos(video_dir, num=None, num_frames=5)
    assert clips.shape == (3, 5, 68, 160, 3) and clips.dtype == torch.uint8
    src = torch.from_numpy(source_frames(18))
    # crf 0 yuv444 H.264: decode equals the source up to colour-conversion rounding.
    for i in range(3):
        assert (clips[i].int() - src[i * 6 : i * 6 + 5].int()).abs().max() <= 2


def test_sorted_recursive_and_num(video_dir: Path, tmp_path: Path) -> None:
    files = list_videos(video_dir)
    assert [f.name for f in files] == ["clip_000.mp4", "clip_001.mp4", "clip_002.mp4"]
    assert [f.name for f in select_videos(video_dir, 2)] == ["clip_000.mp4", "clip_001.mp4"]
    nested = tmp_path / "nested"
    write_mp4(nested / "b" / "x.mp4", source_frames(2), fps=25)
    write_mp4(nested / "a" / "y.mp4", source_frames(2), fps=25)
    (nested / "notes.txt").write_text("not a video")
    assert [f.relative_to(nested).as_posix() for f in list_videos(nested)] == ["a/y.mp4", "b/x.mp4"]
    assert len(list(iter_videos(video_dir, 2, 3))) == 2


def test_missing_empty_and_too_few(video_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or directory"):
        list_videos(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no video files"):
        list_videos(tmp_path / "empty")
    with pytest.raises(ValueError, match="5 videos requested .--num. but only 3 found"):
        select_videos(video_dir, 5)


def test_loose_parquet_files_are_refused_clearly(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="not a dataset directory"):
        list_videos(shards)
    with pytest.raises(ValueError, match="not a dataset directory"):
        list_videos(shards / "part-00000.parquet")


@pytest.mark.slow
def test_preprocessed_shards_are_decoded_through_their_autoencoder(tiny_shards: Path) -> None:
    from dfm_video.data.schema import iter_samples, list_shards

    dataset = tiny_shards  # a data_pipeline.preprocess output directory (manifest.json + shards/)
    items = select_videos(dataset, 3)
    assert len(items) == 3 and all(isinstance(i, tuple) for i in items)
    clips = list(iter_videos(dataset, 3, 9))
    assert [tuple(c.shape) for c in clips] == [(9, 32, 32, 3)] * 3 and clips[0].dtype == torch.uint8
    # the pixel codec is exact: the decoded clip equals the stored levels recomposed and mapped to uint8
    first = next(iter_samples(list_shards(dataset)[0]))
    from dfm_video.autoencoders import load_autoencoder
    from dfm_video.dfm import recompose
    from dfm_video.media import to_uint8

    x = recompose([lv[None] for lv in first.levels], [(1, 2, 2)], "causal")
    assert x.shape == (1, 48, 9, 8, 8)
    expected = to_uint8(load_autoencoder("pixel", pixel_patch=(1, 4, 4)).decode(x)[0])
    assert np.array_equal(clips[0].numpy(), expected)
    with pytest.raises(ValueError, match="needed per clip"):
        list(iter_videos(dataset, 1, 10))


def test_short_video_names_file_and_counts(video_dir: Path) -> None:
    path = video_dir / "clip_000.mp4"
    with pytest.raises(ValueError, match=r"clip_000.mp4: has 6 frames but 16 are needed"):
        read_video(path, 16)
    with pytest.raises(ValueError, match="clip_000.mp4: has 6 frames"):
        load_videos(video_dir, None, 16)


def test_corrupt_file_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not an mp4")
    with pytest.raises(ValueError, match="bad.mp4: cannot decode video"):
        read_video(bad, 4)


def test_load_videos_refuses_mixed_sizes(tmp_path: Path) -> None:
    frames = source_frames(4)
    write_mp4(tmp_path / "a.mp4", frames, fps=25)
    write_mp4(tmp_path / "b.mp4", np.ascontiguousarray(frames[:, :32, :64]), fps=25)
    with pytest.raises(ValueError, match=r"b.mp4: frame size \(32, 64\) differs"):
        load_videos(tmp_path, None, 4)
    shapes = [tuple(c.shape) for c in iter_videos(tmp_path, None, 4)]
    assert shapes == [(4, 68, 160, 3), (4, 32, 64, 3)]
