"""`python -m dfm_video.evaluate` end to end on tiny real mp4 folders, and its user errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from image_helpers import save_tiny_dinov2
from media_helpers import make_video_dir

from dfm_video import evaluate
from dfm_video.eval.frechet import frechet_distance_from_features

FRAMES = 9  # I3D's minimum keeps the CPU cost low; published FVD uses 16


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    dinov2 = save_tiny_dinov2(root / "dinov2_tiny.pth")
    return {
        "real": make_video_dir(root / "real", num_videos=3, num_frames=FRAMES),
        "shifted": make_video_dir(root / "shifted", num_videos=3, num_frames=FRAMES, shift=60, start=27),
        "one": make_video_dir(root / "one", num_videos=1, num_frames=FRAMES),
        "dinov2": dinov2,
    }


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = evaluate.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_end_to_end_report(dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "reports" / "report.json"
    rc, stdout, _ = _run(
        capsys,
        "--real",
        dirs["real"],
        "--fake",
        dirs["shifted"],
        "--metrics",
        "fvd,fid,fdd",
        "--frames",
        FRAMES,
        "--num",
        2,
        "--dinov2-weights",
        dirs["dinov2"],
        "--out",
        out,
        "--device",
        "cpu",
        # sqrtm of FID's 2048x2048 product takes minutes on 2 busy cores; eigh gives the same value.
        "--frechet",
        "eigh",
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fvd", "fid", "fdd"}
    assert all(v > 0 for v in report["metrics"].values())
    s = report["settings"]
    assert s["frechet"].startswith("float64, Tr sqrtm")
    assert s["frames_per_clip"] == FRAMES and s["num_real_videos"] == 2 and s["num_fake_videos"] == 2
    assert (s["fvd"]["num_real_samples"], s["fvd"]["feature_dim"]) == (2, 400)
    assert (s["fid"]["num_fake_samples"], s["fid"]["feature_dim"]) == (2 * FRAMES, 2048)
    assert (s["fdd"]["num_fake_samples"], s["fdd"]["feature_dim"]) == (2 * FRAMES, 64)
    for m in ("fvd", "fid", "fdd"):
        assert len(s[m]["weights_sha256"]) == 64 and Path(s[m]["weights"]).is_file()
        assert "resize" in s[m]
    assert s["fvd"]["weights"].endswith("i3d-kinetics-400.safetensors") and s["fid"]["weights"].endswith("default_1.pt")
    for line in ("fvd", "fid", "fdd", "2 real / 2 fake videos"):
        assert line in stdout


def test_set_against_itself_is_zero_and_shift_is_larger(dirs: dict[str, Path]) -> None:
    fvd = evaluate.build_fvd(None, torch.device("cpu"), FRAMES)
    real, n = evaluate.extract_features(str(dirs["real"]), 2, FRAMES, [fvd], batch_size=2)
    shifted, _ = evaluate.extract_features(str(dirs["shifted"]), 2, FRAMES, [fvd], batch_size=2)
    assert n == 2 and real["fvd"].shape == (2, 400)
    same = frechet_distance_from_features(real["fvd"], real["fvd"], method="eigh")
    apart = frechet_distance_from_features(real["fvd"], shifted["fvd"], method="eigh")
    assert abs(same) < 1e-3
    assert apart > 1.0


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty", "empty: no video files"),
        ("one", "1 video.s.; a covariance needs at least 2"),
        ("frames", r"clip_000.mp4: has 9 frames but 16 are needed"),
        ("shards", "not a dataset directory"),
        ("fdd", "FDD needs --dinov2-weights"),
        ("metric", "unknown .'fvx'.; choose from fvd,fid,fdd"),
        ("num", r"3 videos requested .--num. but only 1 found"),
        ("short", "FVD needs --frames >= 9"),
        ("batch", "--batch-size must be >= 1"),
    ],
)
def test_user_errors_exit_2_with_message(
    case: str, match: str, dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    real, fake = dirs["real"], dirs["real"]
    extra: list = ["--metrics", "fvd"]
    if case == "empty":
        fake = tmp_path / "empty"
        fake.mkdir()
    elif case == "one":
        fake = dirs["one"]
    elif case == "frames":
        extra += ["--frames", 16]
    elif case == "shards":
        fake = tmp_path / "shards"
        fake.mkdir()
        (fake / "shard-0.parquet").write_bytes(b"PAR1")
    elif case == "fdd":
        extra = ["--metrics", "fid,fdd"]
    elif case == "metric":
        extra = ["--metrics", "fvd,fvx"]
    elif case == "num":
        fake, extra = dirs["one"], extra + ["--num", 3]
    elif case == "short":
        extra += ["--frames", 8]
    elif case == "batch":
        extra += ["--batch-size", 0]
    rc, _, err = _run(capsys, "--real", real, "--fake", fake, *extra)
    assert rc == 2
    assert err.startswith("error: ")
    assert re.search(match, err), err
