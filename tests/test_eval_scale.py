"""Evaluation at scale: FVD from extraction sharded over 2 ranks (torchrun) equals one process's,
cached real statistics are reused and refused after a settings change, class-balanced draws, and
real clips cut like training clips (the rule of data_pipeline.decode)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from image_helpers import save_tiny_dinov2
from media_helpers import make_video_dir, source_frames
from train_helpers import BIN, free_port, run

from dfm_video import evaluate
from dfm_video.eval.videos import balanced_order, read_video, select_videos
from dfm_video.media import resize_crop, sample_indices, write_mp4

FRAMES = 9  # I3D's minimum keeps the CPU cost low


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale")
    return {
        "dinov2": save_tiny_dinov2(root / "dinov2_tiny.pth"),
        "real": make_video_dir(root / "real", num_videos=3, num_frames=FRAMES),
        "fake": make_video_dir(root / "fake", num_videos=3, num_frames=FRAMES, shift=40, start=27),
    }


def _evaluate(args: list, launcher: list) -> subprocess.CompletedProcess:
    cmd = launcher + ["dfm_video.evaluate", *[str(a) for a in args]]
    return run(cmd, timeout=600)


@pytest.mark.slow
def test_fvd_from_two_ranks_equals_one_process(dirs: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "--real",
        dirs["real"],
        "--fake",
        dirs["fake"],
        "--metrics",
        "fvd",
        "--frames",
        FRAMES,
        "--batch-size",
        1,
        "--device",
        "cpu",
        "--frechet",
        "eigh",
    ]
    reports = {}
    for name, launcher in {
        "one": [sys.executable, "-m"],
        "two": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m"],
    }.items():
        r = _evaluate([*args, "--out", tmp_path / f"{name}.json"], launcher)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["two"]["settings"]["world_size"] == 2
    assert "rank 1/2" in r.stderr  # the second rank extracted its share
    assert (
        reports["one"]["settings"]["fvd"]["num_fake_samples"]
        == reports["two"]["settings"]["fvd"]["num_fake_samples"]
        == 3
    )
    assert reports["one"]["metrics"]["fvd"] > 1.0
    assert reports["two"]["metrics"]["fvd"] == reports["one"]["metrics"]["fvd"]  # exactly: same batches, same order


def test_cached_real_statistics_are_reused_and_refused_on_other_settings(dirs: dict[str, Path], tmp_path: Path) -> None:
    # FDD with a tiny DINOv2: the cache logic is the same for every metric, and this one is cheap on CPU
    cache = tmp_path / "real_stats.npz"
    kw = dict(
        metrics=["fdd"],
        num_frames=FRAMES,
        batch_size=3,
        device="cpu",
        frechet="eigh",
        real_stats=str(cache),
        dinov2_weights=str(dirs["dinov2"]),
    )
    first = evaluate.evaluate(str(dirs["real"]), str(dirs["fake"]), **kw)
    assert cache.is_file() and first["settings"]["fdd"]["real_statistics"] == "computed"
    again = evaluate.evaluate(str(dirs["real"]), str(dirs["fake"]), **kw)
    assert again["settings"]["fdd"]["real_statistics"] == "cached"
    assert (
        again["metrics"]["fdd"] == first["metrics"]["fdd"]
        and again["settings"]["fdd"]["num_real_samples"] == 3 * FRAMES
    )
    other = save_tiny_dinov2(tmp_path / "other.pth")  # other random weights
    with pytest.raises(ValueError, match=r"fdd.weights_sha256: cached '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        evaluate.evaluate(str(dirs["real"]), str(dirs["fake"]), **dict(kw, dinov2_weights=str(other)))
    with pytest.raises(
        ValueError,
        match=r"real_stats.npz was computed with other settings \(clip: cached .*'size': None"
        r".*this run .*'size': \[32, 32\]",
    ):
        evaluate.evaluate(str(dirs["real"]), str(dirs["fake"]), size=(32, 32), **kw)
    with pytest.raises(ValueError, match=r"num_requested: cached None, this run 2"):
        evaluate.evaluate(str(dirs["real"]), str(dirs["fake"]), num=2, **kw)


def test_class_balanced_draw(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert balanced_order(["a1", "a2", "a3", "b1", "c1", "c2"], ["a", "a", "a", "b", "c", "c"]) == [
        "a1",
        "b1",
        "c1",
        "a2",
        "c2",
        "a3",
    ]
    frames = source_frames(2)
    for cls, n in (("cat", 3), ("dog", 1), ("eel", 2)):
        for i in range(n):
            write_mp4(tmp_path / cls / f"{i}.mp4", frames, fps=25)
    got = [p.relative_to(tmp_path).as_posix() for p in select_videos(tmp_path, 3)]
    assert got == ["cat/0.mp4", "dog/0.mp4", "eel/0.mp4"]  # not the first three paths (all cats)
    with caplog.at_level("WARNING"):
        assert len(select_videos(tmp_path, 5)) == 5
    assert "not class-balanced: class 'dog' has only 1" in caplog.text
    with pytest.raises(ValueError, match="7 videos requested .--num. but only 6 found"):
        select_videos(tmp_path, 7)


def test_real_clips_are_cut_like_training_clips(tmp_path: Path) -> None:
    src = source_frames(12)  # (12, 68, 160, 3) at 25 fps
    path = write_mp4(tmp_path / "v.mp4", src, fps=25)
    every = read_video(path, 12).numpy()
    clip = read_video(path, 4, fps=8.0, size=(32, 32)).numpy()
    idx = sample_indices(25.0, 4, 8.0)
    assert idx == [0, 3, 6, 9]
    assert np.array_equal(clip, resize_crop(every[idx], (32, 32))) and clip.shape == (4, 32, 32, 3)
    with pytest.raises(
        ValueError, match=r"v.mp4: has 12 frames but 5 are needed per clip at 4.0 fps .1.000 s of video."
    ):
        read_video(path, 5, fps=4.0)
    with pytest.raises(ValueError, match="below the target 50.0 fps .--fps."):
        read_video(path, 2, fps=50.0)
    # the same rule as the preprocessing that made the training clips
    decode = pytest.importorskip("data_pipeline.decode")
    assert np.array_equal(
        clip, decode.decode_clip(str(path), False, decode.DecodeParams(4, 8.0, (32, 32), "pyav")).frames
    )
    x = torch.from_numpy(resize_crop(every[:1], (68, 68)))
    assert x.shape == (1, 68, 68, 3) and torch.equal(
        x[0], torch.from_numpy(every[0, :, 46:114])
    )  # no scaling: a centre crop


def test_paper_protocol_fills_the_settings_and_refuses_a_smaller_set(
    dirs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    assert evaluate.main(["--protocol", "k700-fvd10k", "--real", str(dirs["real"]), "--fake", str(dirs["fake"])]) == 2
    assert "10000 videos requested (--num) but only 3 found" in capsys.readouterr().err
    assert evaluate.paper_name("fvd", 10000) == "FVD10K" and evaluate.paper_name("fid", 50000) == "FID50K"
    assert evaluate.paper_name("fvd", 7) == "FVD@7"
