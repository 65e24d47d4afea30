"""Sampling at scale: the same files for 1, 2 (deepspeed launcher, or none) and 3 (torchrun) ranks and any batch
size, a SIGKILLed run finished by a rerun with nothing twice, refusal of a folder made with other
settings, labels (balanced or from a file), and exports that carry their autoencoder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import read_frames
from train_helpers import BIN, ROOT, cpu_env, free_port, run

from dfm_video.autoencoders import autoencoder_info
from dfm_video.config import load_config
from dfm_video.models import build_model
from dfm_video.sample import main
from dfm_video.sampling import generate, load_generator, plan
from dfm_video.train.export import export_weights

NUM = 7  # not a multiple of 2 or 3 ranks, nor of the 3 classes


def make_export(out: Path, seed: int = 0) -> Path:
    """A random-weight 1-block model on (12, 5, 8, 8) pixel-codec latents: 5 frames of 16x16, with
    classifier-free guidance on. Every weight gets small random values, the zero-initialised heads
    and adaLN gates too, so the velocity depends on the input, t, the label and the guidance (a fresh
    model's zero heads give v = 0: every sample would be its noise, whatever ranks got wrong)."""
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "model.hidden_size=32",
            "model.num_heads=2",
            "model.in_channels=12",
            "model.num_classes=3",
            "sample.steps=[3,2]",
            "sample.cfg_scale=4.0",
        ],
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.dfm)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    codec = dict(autoencoder_info("pixel", "", (1, 2, 2)), path="")
    meta = {"labels": ["a", "b", "c"], "latent_shape": [12, 5, 8, 8], "stats": None, "fps": 8.0, "autoencoder": codec}
    return export_weights(model.state_dict(), cfg, meta, out, 0)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "export")


@pytest.fixture(scope="module")
def single(export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one plain process, batches of 2."""
    out = tmp_path_factory.mktemp("single") / "s"
    r = _sample(["--checkpoint", export, "--out", out, "--num-samples", NUM, "--batch-size", 2])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _sample(args: list, launcher: list | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m"]) + ["dfm_video.sample"] + [str(a) for a in args]
    return run(cmd, timeout=300)


def _samples(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("sample_"))


def _assert_same_samples(a: Path, b: Path) -> None:
    names = _samples(a)
    assert names == _samples(b) and len(names) == NUM
    for n in names:
        fa, fb = read_frames(a / n), read_frames(b / n)
        assert fa.shape == (5, 16, 16, 3)
        # the same sample up to float rounding: batch sizes change the matmul blocking (measured max
        # latent difference 2e-5), which may move a pixel by one step of 8 bits before encoding;
        # a wrong label, guidance or weights moves them by far more (test_the_export_is_sensitive_...)
        diff = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
        assert diff.max() <= 3 and diff.mean() < 0.05, (n, int(diff.max()), float(diff.mean()))


@pytest.mark.slow
def test_two_and_three_ranks_and_other_batch_sizes_give_the_same_files(
    export: Path, single: Path, tmp_path: Path
) -> None:
    assert _samples(single)[:4] == [
        "sample_000000_a.mp4",
        "sample_000001_b.mp4",
        "sample_000002_c.mp4",
        "sample_000003_a.mp4",
    ]
    report = json.loads((single / "samples.json").read_text())
    assert (report["num_samples"], report["written"], report["frames"], report["size"]) == (NUM, NUM, 5, [16, 16])
    launches = {
        "deepspeed2": ([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module"], 2),
        "torchrun3": ([str(BIN / "torchrun"), "--nproc_per_node", "3", "--master_port", str(free_port()), "-m"], 3),
    }
    for name, (launcher, batch) in launches.items():
        out = tmp_path / name
        r = _sample(["--checkpoint", export, "--out", out, "--num-samples", NUM, "--batch-size", batch], launcher)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert f"{NUM} samples in {out} ({NUM} written now" in r.stdout
        world = json.loads((out / "samples.json").read_text())["world_size"]
        assert world == int(name[-1])
        assert "[rank 1/" in r.stderr and "ETA" in r.stderr  # every rank sampled and reported progress
        _assert_same_samples(single, out)


@pytest.mark.slow
def test_without_a_launcher_ranks_come_from_the_environment(export: Path, single: Path, tmp_path: Path) -> None:
    out, port = tmp_path / "env", str(free_port())
    cmd = [
        sys.executable,
        "-m",
        "dfm_video.sample",
        "--checkpoint",
        str(export),
        "--out",
        str(out),
        "--num-samples",
        str(NUM),
        "--batch-size",
        "4",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(
                cpu_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert "[rank 1/2] 3/3 samples" in results[1][1]  # rank 1 made the second global batch (indices 4..6)
    _assert_same_samples(single, out)


@pytest.mark.slow
def test_sigkill_then_rerun_finishes_with_nothing_twice(export: Path, single: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["--checkpoint", str(export), "--out", str(out), "--num-samples", str(NUM), "--batch-size", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfm_video.sample", *args],
        cwd=ROOT,
        env=cpu_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not out.is_dir() or len(_samples(out)) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {n: (out / n).stat().st_mtime_ns for n in _samples(out)}
    assert 2 <= len(before) < NUM, before  # killed in the middle
    r = _sample(args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "samples.json").read_text())
    assert report["resumed"] and report["written"] == NUM - len(before)
    assert not list(out.rglob("*.partial"))
    _assert_same_samples(single, out)
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # files from before the kill were kept
    r = _sample(args)  # a third run has nothing left to do
    assert r.returncode == 0 and f"(0 written now, {NUM} existed" in r.stdout


def test_the_export_is_sensitive_to_labels_guidance_and_weights(export: Path, tmp_path: Path) -> None:
    """What the rank tests compare can differ: another label, CFG scale or set of weights changes a sample."""
    gen = load_generator(export)
    sc = gen.cfg.sample
    assert sc.cfg_scale == 4.0

    def one(g, label: int, scale: float):
        lat, _ = generate(g, [label], steps=list(sc.steps), tau=sc.tau, cfg_scale=scale, seed=0, indices=[3])
        return lat

    ref = one(gen, 0, 4.0)
    for other in (one(gen, 1, 4.0), one(gen, 0, 1.0), one(load_generator(make_export(tmp_path / "o", seed=1)), 0, 4.0)):
        rel = float((other - ref).norm() / ref.norm())
        assert rel > 1e-2, rel


def test_a_folder_from_other_settings_or_weights_is_refused(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "s"
    base = ["--checkpoint", str(export), "--out", str(out), "--num-samples", "2", "--no-progress"]
    assert main(base) == 0
    assert main(base + ["--seed", "5"]) == 2
    assert "seed: folder has 0, this run 5" in capsys.readouterr().err
    other = make_export(tmp_path / "other", seed=1)
    assert main(["--checkpoint", str(other), *base[2:]]) == 2
    assert "weights_sha256: folder has" in capsys.readouterr().err
    assert main(["--checkpoint", str(other), *base[2:], "--overwrite"]) == 0  # unless asked to start afresh
    assert "(2 written now, 0 existed" in capsys.readouterr().out
    assert main(base + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(base + ["--num-samples", "3"]) == 0  # more of the same: only the new index is made
    assert "(1 written now, 2 existed" in capsys.readouterr().out
    assert main([*base[:4], "--num-samples", "0"]) == 2
    assert "--num-samples must be >= 1, got 0" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "sample_000000_a.mp4").write_bytes(b"")
    assert main(["--checkpoint", str(export), "--out", str(stray), "--num-samples", "1"]) == 2
    assert "no sampling.json" in capsys.readouterr().err


def test_labels_balanced_or_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert plan.balanced_labels(6, 3) == [0, 1, 2, 0, 1, 2]
    with caplog.at_level("WARNING"):
        assert plan.balanced_labels(4, 3) == [0, 1, 2, 0]
    assert "not a multiple of 3 classes" in caplog.text
    f = tmp_path / "labels.txt"
    f.write_text("# one per line\nb\n2\n\na\n")
    assert plan.labels_from_file(f, ["a", "b", "c"], 3, 3) == [1, 2, 0]
    with pytest.raises(ValueError, match=r"3 labels but --num-samples 4: the requested samples are not reachable"):
        plan.labels_from_file(f, ["a", "b", "c"], 3, 4)
    f.write_text("a\nzebra\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: 'zebra' is neither a label"):
        plan.labels_from_file(f, ["a", "b", "c"], 3, 2)
    # noise depends on (seed, index) only: the same row whatever batch it is drawn in
    a = plan.sample_noise(0, [3, 4], 2, [(1, 2, 2)])[0]
    b = plan.sample_noise(0, [4], 2, [(1, 2, 2)])[0]
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert plan.rank_batches(7, 2, 1, 3) == [[2, 3]] and plan.rank_batches(7, 2, 0, 3) == [[0, 1], [6]]


def test_exports_carry_their_autoencoder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline_helpers import save_tiny_vae

    from dfm_video.train.export import main as export_main

    vae = save_tiny_vae("kl", tmp_path / "my-vae")  # image VAE: (4, 1, 8, 8) latents -> 16x16 PNGs
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "model.hidden_size=32",
            "model.num_heads=2",
            "model.in_channels=4",
            "model.num_classes=2",
            "sample.steps=[2,2]",
        ],
    )
    codec = dict(autoencoder_info("kl", vae), path=str(vae))
    meta = {"labels": ["x", "y"], "latent_shape": [4, 1, 8, 8], "stats": None, "fps": 8.0, "autoencoder": codec}
    plain = export_weights(build_model(cfg.model, cfg.dfm).state_dict(), cfg, meta, tmp_path / "plain", 3)
    assert (plain / "autoencoder" / "my-vae" / "config.json").is_file()  # the config always travels
    assert not list((plain / "autoencoder").rglob("*.safetensors"))
    assert export_main(["--checkpoint", str(plain), "--out", str(tmp_path / "full"), "--autoencoder-weights"]) == 0
    assert list((tmp_path / "full" / "autoencoder" / "my-vae").glob("*.safetensors"))
    moved = vae.rename(tmp_path / "moved")  # the recorded path is gone
    args = ["--num-samples", "2", "--no-progress"]
    assert main(["--checkpoint", str(tmp_path / "full"), "--out", str(tmp_path / "a"), *args]) == 0  # the bundled copy
    assert sorted(p.name for p in (tmp_path / "a").glob("sample_*")) == ["sample_000000_x.png", "sample_000001_y.png"]
    assert main(["--checkpoint", str(plain), "--out", str(tmp_path / "b"), *args]) == 2
    assert re.search(
        r"the path recorded at preprocessing '.*my-vae' is not usable.*--autoencoder-path", capsys.readouterr().err
    )
    # --autoencoder-path wins; it must be the same VAE (kind, folder name, config hash)
    same = moved.rename(tmp_path / "my-vae")
    assert main(["--checkpoint", str(plain), "--out", str(tmp_path / "b"), "--autoencoder-path", str(same), *args]) == 0
    a, b = (sorted((tmp_path / d).glob("sample_*")) for d in ("a", "b"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = save_tiny_vae("kl", tmp_path / "other" / "my-vae")
    cfg_json = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(cfg_json, scaling_factor=0.25)))
    assert (
        main(["--checkpoint", str(plain), "--out", str(tmp_path / "c"), "--autoencoder-path", str(other), *args]) == 2
    )
    assert "but the data was encoded with 'kl:my-vae:" in capsys.readouterr().err
