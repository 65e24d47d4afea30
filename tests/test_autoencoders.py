"""Autoencoder wrappers: the exact pixel codec, and tiny random diffusers VAEs saved with
save_pretrained and loaded back through `load_autoencoder` (the path a user's VAE takes)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from pipeline_helpers import save_tiny_vae

from dfm_video.autoencoders import (
    CodecGeometry,
    LatentScaling,
    PixelAutoencoder,
    autoencoder_info,
    geometry_of,
    load_autoencoder,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub


def _video(b: int, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- pixel


@pytest.mark.parametrize("patch", [(1, 4, 4), (2, 2, 2), (1, 1, 1), (4, 2, 8)])
def test_pixel_is_exact_and_invertible(patch: tuple[int, int, int]) -> None:
    ae = load_autoencoder("pixel", pixel_patch=patch)
    x = _video(2, 8, 16, 32)
    z = ae.encode(x)
    pt, ph, pw = patch
    assert z.shape == (2, 3 * pt * ph * pw, 8 // pt, 16 // ph, 32 // pw) == (2, *ae.latent_shape(8, 16, 32))
    assert torch.equal(ae.decode(z), x)  # a permutation: bit-exact
    assert torch.equal(torch.sort(z.flatten())[0], torch.sort(x.flatten())[0])  # values untouched (identity scaling)


def test_pixel_channel_layout() -> None:
    # channel ((c * pt + dt) * ph + dy) * pw + dx holds pixel (c, t*pt + dt, y*ph + dy, x*pw + dx)
    ae = PixelAutoencoder((2, 2, 2))
    x = _video(1, 4, 4, 4)
    z = ae.encode(x)
    c, dt, dy, dx, t, y, xx = 2, 1, 0, 1, 1, 1, 0
    assert z[0, ((c * 2 + dt) * 2 + dy) * 2 + dx, t, y, xx] == x[0, c, t * 2 + dt, y * 2 + dy, xx * 2 + dx]


def test_pixel_keeps_every_frame_with_pt_1() -> None:
    assert PixelAutoencoder((1, 4, 4)).latent_shape(9, 32, 32) == (48, 9, 8, 8)


@pytest.mark.parametrize(
    "frames,h,w,match",
    [
        (8, 32, 30, "width=30 is not a multiple of its spatial compression 4"),
        (7, 32, 32, "num_frames=7"),
        (0, 32, 32, ">= 1"),
    ],
)
def test_pixel_rejects_shapes_that_do_not_fit(frames: int, h: int, w: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PixelAutoencoder((2, 4, 4)).latent_shape(frames, h, w)


def test_causal_geometry_wants_one_plus_k_frames() -> None:
    g = CodecGeometry(16, 4, (8, 8), causal=True)
    assert g.latent_shape(49, 512, 512) == (16, 13, 64, 64)
    assert g.latent_shape(1, 64, 64) == (16, 1, 8, 8)
    with pytest.raises(ValueError, match=r"needs 1 \+ 4k frames \(e.g. 45 or 49\)"):
        g.latent_shape(48, 512, 512)


def test_latent_scaling_roundtrip() -> None:
    sc = LatentScaling((0.1, -0.2), (2.0, 0.5))
    z = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64)
    assert torch.allclose(sc.unscale(sc.scale(z)), z)
    assert torch.allclose(sc.scale(z)[:, 1], (z[:, 1] + 0.2) * 0.5)
    assert LatentScaling.from_dict(sc.to_dict()) == sc
    with pytest.raises(ValueError, match="zero multiplier"):
        LatentScaling((0.0,), (0.0,))


# ----------------------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vaes")
    return {k: str(save_tiny_vae(k, root / k)) for k in ("cogvideox", "wan", "kl")}


def _raw_and_expected(kind: str, path: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw posterior mean from a separately loaded diffusers model, scaling applied by hand)."""
    import diffusers

    cfg = json.loads(open(os.path.join(path, "config.json")).read())
    cls = {
        "cogvideox": diffusers.AutoencoderKLCogVideoX,
        "wan": diffusers.AutoencoderKLWan,
        "kl": diffusers.AutoencoderKL,
    }[kind]
    vae = cls.from_pretrained(path).eval()
    with torch.no_grad():
        if kind == "kl":
            b, _, f, h, w = x.shape
            raw = vae.encode(x.transpose(1, 2).reshape(b * f, 3, h, w)).latent_dist.mean
            raw = raw.reshape(b, f, *raw.shape[1:]).transpose(1, 2)
        else:
            raw = vae.encode(x).latent_dist.mean
    v = lambda vals: torch.tensor(vals, dtype=raw.dtype).view(1, -1, 1, 1, 1)  # noqa: E731
    if kind == "wan":
        expected = (raw - v(cfg["latents_mean"])) / v(cfg["latents_std"])
    else:
        expected = (raw - (cfg["shift_factor"] or 0.0)) * cfg["scaling_factor"]
    return raw, expected


@pytest.mark.parametrize(
    "kind,frames,latent", [("cogvideox", 9, (4, 3, 8, 8)), ("wan", 9, (4, 3, 8, 8)), ("kl", 3, (4, 3, 16, 16))]
)
def test_diffusers_vae_loads_from_local_dir_and_scales(
    vae_dirs: dict[str, str], kind: str, frames: int, latent: tuple[int, ...]
) -> None:
    ae = load_autoencoder(kind, vae_dirs[kind])
    x = _video(2, frames, 32, 32, seed=1)
    z = ae.encode(x)
    assert z.shape == (2, *latent) == (2, *ae.latent_shape(frames, 32, 32))
    raw, expected = _raw_and_expected(kind, vae_dirs[kind], x)
    assert not torch.allclose(raw, expected)  # the scaling is not the identity here: the test can tell
    assert torch.allclose(z, expected, atol=1e-5)
    assert torch.equal(ae.encode(x), z)  # posterior mean: deterministic
    y = ae.decode(z)
    assert y.shape[:2] == (2, 3) and y.shape[3:] == (32, 32)
    info = autoencoder_info(kind, vae_dirs[kind])
    assert info == ae.describe() and info["id"].startswith(f"{kind}:")
    assert geometry_of(info) == ae.geometry


def test_decode_undoes_scaling(vae_dirs: dict[str, str]) -> None:
    import diffusers

    ae = load_autoencoder("wan", vae_dirs["wan"])
    vae = diffusers.AutoencoderKLWan.from_pretrained(vae_dirs["wan"]).eval()
    z = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():
        ref = vae.decode(ae.scaling.unscale(z)).sample
    assert torch.allclose(ae.decode(z), ref, atol=1e-5)


def test_pipeline_folder_with_vae_subfolder(vae_dirs: dict[str, str], tmp_path) -> None:
    import shutil

    shutil.copytree(vae_dirs["cogvideox"], tmp_path / "CogVideoX-tiny" / "vae")
    ae = load_autoencoder("cogvideox", tmp_path / "CogVideoX-tiny")
    assert ae.id.startswith("cogvideox:CogVideoX-tiny:")


def test_hub_ids_and_wrong_dirs_are_refused(vae_dirs: dict[str, str], tmp_path) -> None:
    with pytest.raises(ValueError, match="not an existing local directory; hub ids are not accepted"):
        load_autoencoder("cogvideox", "THUDM/CogVideoX-2b")
    with pytest.raises(ValueError, match="needs a local directory"):
        autoencoder_info("wan", "")
    with pytest.raises(ValueError, match="no config.json"):
        load_autoencoder("kl", tmp_path)
    with pytest.raises(ValueError, match="_class_name is 'AutoencoderKLWan'.*expects 'AutoencoderKLCogVideoX'"):
        load_autoencoder("cogvideox", vae_dirs["wan"])
    with pytest.raises(ValueError, match="unknown autoencoder 'sdxl'"):
        load_autoencoder("sdxl", vae_dirs["kl"])


def test_causal_vae_refuses_frame_counts_that_do_not_fit(vae_dirs: dict[str, str]) -> None:
    ae = load_autoencoder("cogvideox", vae_dirs["cogvideox"])
    with pytest.raises(ValueError, match=r"num_frames=8 .* 1 \+ 4k frames"):
        ae.encode(_video(1, 8, 32, 32))


def test_reduced_precision_codec_still_returns_float32(vae_dirs: dict[str, str]) -> None:
    x = _video(1, 5, 32, 32, seed=2)
    ref = load_autoencoder("cogvideox", vae_dirs["cogvideox"]).encode(x)
    z = load_autoencoder("cogvideox", vae_dirs["cogvideox"], dtype=torch.bfloat16).encode(x)
    assert z.dtype == torch.float32 and z.shape == ref.shape
    assert (z - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 rounding, not a different codec
