"""FDD's DINOv2 port: official-code equivalence (tiny, seeded), ViT-L/14 loading, errors.

No DINOv2 weights exist offline: every model here is random, saved to a temp file and read back
through `load_dinov2`, the same code path real weights take.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfm_video.eval import dinov2
from dfm_video.eval.dinov2 import VITL14, DinoV2Config, DinoVisionTransformer, load_dinov2

FIXTURES = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("make_dinov2_reference", FIXTURES / "make_dinov2_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

TINY = DinoV2Config(embed_dim=128, depth=2, patch_size=14, pos_grid=37)


def _save_seeded(cfg: DinoV2Config, path: Path) -> Path:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DinoVisionTransformer(cfg).state_dict().items()}
    torch.save(ref.seeded_state_dict(shapes), path)
    return path


def test_matches_official_dinov2_code(tmp_path: Path) -> None:
    """Reference CLS features from facebookresearch/dinov2's own model code (fixture script)."""
    model = load_dinov2(_save_seeded(TINY, tmp_path / "tiny.pth"))
    assert model.cfg == TINY and model.cfg.num_heads == 2
    expected = np.load(FIXTURES / "dinov2_tiny_reference.npy")
    with torch.inference_mode():
        got = np.stack([model(ref.seeded_inputs(s)).numpy() for s in ref.SIZES])
    assert got.shape == expected.shape == (2, 2, 128)
    # 224px exercises the bicubic positional-embedding resize, 518px the stored grid.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow  # writes and reads a 1.2 GB checkpoint: ~5 s idle, up to ~30 s on busy shared disks/cores
def test_vitl14_shaped_checkpoint_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in DinoVisionTransformer(VITL14).state_dict().items()}
    # The official dinov2_vitl14_pretrain.pth layout: 343 flat tensors, 24 blocks, no registers.
    assert len(shapes) == 343 and shapes["pos_embed"] == (1, 1370, 1024)
    assert shapes["patch_embed.proj.weight"] == (1024, 3, 14, 14) and "blocks.23.ls2.gamma" in shapes
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, path)
    with caplog.at_level(logging.WARNING):
        model = load_dinov2(path)
    assert model.cfg == VITL14 and "not the ViT-L/14" not in caplog.text
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1024)


def test_preprocess_matches_pil_bicubic() -> None:
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 68, 160, 3), dtype=np.uint8))
    x = dinov2.preprocess_dinov2(frames)
    assert x.shape == (2, 3, 224, 224)
    pil = np.asarray(Image.fromarray(frames[1].numpy()).resize((224, 224), Image.BICUBIC))
    mean, std = np.array(dinov2.IMAGENET_MEAN), np.array(dinov2.IMAGENET_STD)
    expected = ((pil / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x[1].numpy(), expected, atol=1e-5)


def test_features_and_non_vitl_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = load_dinov2(_save_seeded(TINY, tmp_path / "tiny.pth"))
    assert "not the ViT-L/14" in caplog.text
    frames = torch.zeros(5, 30, 40, 3, dtype=torch.uint8)
    assert dinov2.dinov2_features(model, frames, batch_size=2).shape == (5, 128)


def test_bad_checkpoints_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="absent.pth does not exist"):
        load_dinov2(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth: not a loadable torch state dict"):
        load_dinov2(junk)

    path = _save_seeded(TINY, tmp_path / "ok.pth")
    state = torch.load(path, weights_only=True)
    cases = {
        "register tokens": dict(state, register_tokens=torch.zeros(1, 4, 128)),
        "missing 'cls_token'": {k: v for k, v in state.items() if k != "cls_token"},
        "missing keys": {k: v for k, v in state.items() if k != "blocks.1.ls2.gamma"},
        "flat 'blocks.<i>.' keys": {k.replace("blocks.", "blocks.0.", 1): v for k, v in state.items()},
    }
    for match, sd in cases.items():
        p = tmp_path / "bad.pth"
        torch.save(sd, p)
        with pytest.raises(ValueError, match=match):
            load_dinov2(p)
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match="flat state dict of tensors"):
        load_dinov2(tmp_path / "wrapped.pth")
