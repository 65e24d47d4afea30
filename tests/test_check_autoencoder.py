"""`python -m data_pipeline.check_autoencoder`: a tiny random CogVideoX VAE saved with save_pretrained
(the layout users download) encodes one real clip; the CLI prints the latent shape and scale."""

import subprocess
import sys

from pipeline_helpers import ROOT, make_folder_clips, save_tiny_vae

OVERRIDES = ["--set", "preprocess.autoencoder=cogvideox", "--set", "preprocess.decoder=pyav"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_pipeline.check_autoencoder", "--config", "preprocess/tiny.yaml", *args]
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_check_autoencoder_prints_latent_shape_and_scale(tmp_path):
    vae = save_tiny_vae("cogvideox", tmp_path / "CogVideoX-tiny" / "vae")
    clip = make_folder_clips(tmp_path / "clips", 1)[0]
    # A pipeline folder (the VAE in vae/) as downloaded; the vae/ folder itself works the same way.
    r = _cli("--path", str(vae.parent), "--clip", str(clip), *OVERRIDES)
    assert r.returncode == 0, r.stderr[-3000:]
    # 9 frames of 32 x 32: 4 latent channels, causal 4x in time (1 + 8 / 4 = 3), 4x in space
    assert "latent shape (C, T, h, w): (4, 3, 8, 8)" in r.stdout, r.stdout
    assert "latent scale: std " in r.stdout and "multiplier 0.7" in r.stdout, r.stdout


def test_check_autoencoder_names_the_problem(tmp_path):
    clip = make_folder_clips(tmp_path / "clips", 1)[0]
    r = _cli("--path", "THUDM/CogVideoX-2b", "--clip", str(clip), *OVERRIDES)
    assert r.returncode == 2 and "not an existing local directory; hub ids are not accepted" in r.stderr, r.stderr
