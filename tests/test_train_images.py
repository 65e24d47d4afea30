"""Images (T = 1) for real: scikit-image's photographs -> the Ray pipeline -> DeepSpeed on 2 gloo ranks
-> `python -m dfm_video.sample` (PNGs + contact sheet) -> `python -m dfm_video.evaluate` (FID, FDD);
and one run mixing video and image shards: resume bit-exact, one model sampling both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from image_helpers import PHOTOS, make_photo_folder, save_tiny_dinov2
from media_helpers import read_frames
from PIL import Image
from train_helpers import ROOT, cpu_env, deepspeed_cmd, read_metrics, run

from dfm_video import sample as sample_cli

pytestmark = pytest.mark.slow

# configs/imagenet512.yaml (the paper's image setting) shrunk to this machine: the model and batch only
TINY_XL = [
    "model.depth=2",
    "model.hidden_size=64",
    "model.num_heads=4",
    "model.num_classes=2",
    "model.attention=sdpa",
    "model.kernels=torch",
    "data.num_workers=0",
    "distributed.precision=fp32",
    "distributed.micro_batch_size=2",
    "distributed.global_batch_size=4",
    "distributed.backend=gloo",
    "optim.warmup_steps=2",
    "train.log_every=1",
    "train.peak_tflops=1.0",
    "train.ema_decay=0.9",
    "sample.steps=[3,2]",
]


def _cli(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=cpu_env(), capture_output=True, text=True
    )


def test_photos_train_sample_and_evaluate_end_to_end(image_shards, tmp_path: Path) -> None:
    rejects = json.loads((image_shards["kl"] / "manifest.json").read_text())["rejects_by_reason"]
    assert rejects == {"decode: unreadable": 1}  # broken.png, rejected with its reason; the 8 photos kept
    out = tmp_path / "run"
    r = run(
        deepspeed_cmd(
            [
                f"data.shards={image_shards['kl']}",
                f"train.output_dir={out}",
                "train.steps=4",
                "train.ckpt_every=4",
                "dfm.standardize=null",
                *TINY_XL,
            ],
            config="imagenet512.yaml",
        )
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "dfm.standardize=false" in r.stdout and "(default for image (T = 1) data)" in r.stdout
    m = read_metrics(out)
    assert sorted(m) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(m[s]["loss/total"])) for s in m)
    meta = json.loads((out / "export" / "dataset.json").read_text())
    assert meta["latent_shape"] == [16, 1, 16, 16] and meta["stats"] is None
    assert meta["autoencoder"]["scaling"]["offset"][0] == pytest.approx(0.1159)
    assert "standardize: false" in (out / "export" / "config.yaml").read_text()

    samples = tmp_path / "samples"
    r = _cli(
        "dfm_video.sample",
        "--checkpoint",
        out,
        "--out",
        samples,
        "--num-samples",
        4,
        "--no-progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pngs = sorted(samples.glob("sample_*.png"))
    assert [p.name.split("_", 2)[2] for p in pngs] == ["object.png", "scene.png", "object.png", "scene.png"]
    assert all(Image.open(p).size == (32, 32) and Image.open(p).mode == "RGB" for p in pngs)
    assert Image.open(samples / "contact_sheet.png").size[0] > 32

    real = make_photo_folder(tmp_path / "real", broken=False)
    dino = save_tiny_dinov2(tmp_path / "dinov2_tiny.pth", seed=0)
    report = tmp_path / "report.json"
    r = _cli(
        "dfm_video.evaluate",
        "--real",
        real,
        "--fake",
        samples,
        "--metrics",
        "fid,fdd",
        "--frames",
        1,
        "--dinov2-weights",
        dino,
        "--frechet",
        "eigh",
        "--device",
        "cpu",
        "--out",
        report,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert set(rep["metrics"]) == {"fid", "fdd"} and all(v > 0 for v in rep["metrics"].values())
    n_real = sum(len(v) for v in PHOTOS.values())
    s = rep["settings"]
    assert (s["num_real_videos"], s["num_fake_videos"]) == (n_real, 4)  # the contact sheet is not a sample
    assert (s["fid"]["num_fake_samples"], s["fdd"]["num_real_samples"]) == (4, n_real)


def _mix_overrides(tiny_shards: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data.shards=",
        f"data.mix=[{{shards: '{tiny_shards}', weight: 0.75}}, {{shards: '{images}', weight: 0.25}}]",
        f"train.output_dir={out}",
        "train.log_every=1",
        "model.patch_size=[2,2,2]",
        "dfm.factors=[[2,2,2]]",
        "dfm.standardize=false",
        "model.num_classes=12",
        "sample.steps=[3,2]",
        *extra,
    ]


@pytest.fixture(scope="module")
def mix_run(tiny_shards, image_shards, tmp_path_factory) -> Path:
    """6 uninterrupted steps on 2 ranks mixing the video shards (3/4) and the photos (1/4), checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("mix") / "run"
    r = run(
        deepspeed_cmd(_mix_overrides(tiny_shards, image_shards["pixel"], out, "train.steps=6", "train.ckpt_every=3"))
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "data: mixing 2 datasets per micro-batch" in r.stdout
    return out


def test_a_mixed_run_resumes_bit_exact(mix_run, tiny_shards, image_shards, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    ckpt = mix_run / "checkpoints" / "step_00000003"
    r = run(
        deepspeed_cmd(
            _mix_overrides(tiny_shards, image_shards["pixel"], out, "train.steps=6", "train.ckpt_every=3"),
            extra=["--resume", str(ckpt)],
        )
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    got, ref = read_metrics(out), read_metrics(mix_run)
    assert sorted(got) == [4, 5, 6]
    for s in (4, 5, 6):
        assert got[s]["loss/total"] == ref[s]["loss/total"] and got[s]["grad_norm"] == ref[s]["grad_norm"], s


def test_one_mixed_model_samples_videos_and_images(mix_run, tmp_path: Path, capsys) -> None:
    meta = json.loads((mix_run / "export" / "dataset.json").read_text())
    assert [b["latent_shape"] for b in meta["buckets"]] == [[48, 9, 8, 8], [48, 1, 8, 8]]
    common = ["--checkpoint", str(mix_run), "--num-samples", "2", "--no-progress", "--device", "cpu"]
    assert sample_cli.main([*common, "--out", str(tmp_path / "video"), "--bucket", "0"]) == 0
    assert sample_cli.main([*common, "--out", str(tmp_path / "image"), "--bucket", "shards-pixel"]) == 0
    videos = sorted((tmp_path / "video").glob("sample_*.mp4"))
    images = sorted((tmp_path / "image").glob("sample_*.png"))
    assert len(videos) == 2 and len(images) == 2
    frames = read_frames(videos[0])
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
    assert Image.open(images[0]).size == (32, 32)
    assert sample_cli.main([*common, "--out", str(tmp_path / "x"), "--bucket", "7"]) == 2
    assert "no such bucket; this model has 0: shards (latent [48, 9, 8, 8]), 1: shards-pixel" in capsys.readouterr().err


def test_mismatched_latent_channels_fail_before_any_process_group(tiny_shards, image_shards, tmp_path: Path) -> None:
    # No launcher at all: starting a process group here would fail with "must be started by a launcher".
    args = [a for o in _mix_overrides(tiny_shards, image_shards["kl"], tmp_path / "x") for a in ("--set", o)]
    r = _cli("dfm_video.train", "--config", "tiny.yaml", *args)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "different latent channels" in r.stderr and "'shards' (" in r.stderr and "48 channels" in r.stderr
    assert "'shards-kl' (" in r.stderr and "16 channels" in r.stderr
    assert "launcher" not in r.stderr and not (tmp_path / "x").exists()
