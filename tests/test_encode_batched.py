"""The encoder actor's batched, on-device path against the clip-by-clip host path it replaces:
latents, levels and shard statistics, and the reject paths inside a batch (a real tiny CogVideoX VAE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_helpers import save_tiny_vae, tiny_config

from data_pipeline.encode import EncodeSpec, EncodeStage, encode_levels
from data_pipeline.writer import OutputDir, WriterSpec, write_batch
from dfm_video import faults
from dfm_video.autoencoders import load_autoencoder
from dfm_video.data import schema as S
from dfm_video.dfm.standardize import LevelMoments, clip_moments

FACTORS = ((2, 2, 2),)
SHAPES = ((4, 2, 4, 4), (4, 3, 8, 8))  # tiny CogVideoX: 9 x 32 x 32 frames -> 4 x 3 x 8 x 8 latents


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vae("cogvideox", tmp_path_factory.mktemp("vae") / "vae")


def _batch(n: int, bad: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "path": np.array([f"/p/c{i}.mp4" for i in range(n)], dtype=object),
        "label": np.array(["a"] * n, dtype=object),
        "label_id": np.zeros(n, np.int64),
        "split": np.array(["train"] * n, dtype=object),
        "is_image": np.zeros(n, bool),
        "frames": rng.integers(0, 256, (n, 9, 32, 32, 3), dtype=np.uint8),
        "frame_indices": np.tile(np.arange(9, dtype=np.int32), (n, 1)),
        "source_fps": np.full(n, 25.0, np.float32),
        "decoder": np.array(["decord"] * n, dtype=object),
        "stage": np.array(["decode" if i in bad else "" for i in range(n)], dtype=object),
        "reason": np.array(["too short" if i in bad else "" for i in range(n)], dtype=object),
        "detail": np.array(["x" if i in bad else "" for i in range(n)], dtype=object),
    }


def _spec(vae: Path, **kw) -> EncodeSpec:
    base = dict(
        kind="cogvideox",
        path=str(vae),
        pixel_patch=(1, 1, 1),
        dtype="float32",
        use_gpu=False,
        factors=FACTORS,
        temporal_mode="causal",
        level_shapes=SHAPES,
    )
    return EncodeSpec(**{**base, **kw})


def _writer(root: Path, vae: Path, latent_dtype: str) -> WriterSpec:
    codec = load_autoencoder("cogvideox", str(vae)).describe()
    return WriterSpec(
        str(root), [list(f) for f in FACTORS], "causal", [list(s) for s in SHAPES], codec, 8.0, latent_dtype
    )


def test_clip_moments_equal_level_moments_update() -> None:
    """One clip's moments from the batched helper merge to exactly what `update` gives clip by clip."""
    x = torch.randn(3, 4, 2, 5, 5) * 3 + 1
    direct, merged = LevelMoments(1, 4), LevelMoments(1, 4)
    for i in range(3):
        direct.update([x[i]])
    n, mean, m2 = clip_moments(x)
    for i in range(3):
        merged.add(0, n, mean[i], m2[i])
    assert n == 50 and torch.equal(direct.mean, merged.mean) and torch.equal(direct.m2, merged.m2)
    flat = x.double().numpy().reshape(3, 4, -1)  # the textbook definitions, independently of both
    np.testing.assert_allclose(mean.numpy(), flat.mean(axis=2), rtol=1e-13)
    np.testing.assert_allclose(m2.numpy(), flat.var(axis=2) * 50, rtol=1e-12)


@pytest.mark.parametrize("latent_dtype", ["float32", "bfloat16"])
def test_batched_levels_and_statistics_equal_the_clip_by_clip_path(vae, tmp_path, latent_dtype: str) -> None:
    """batch_size 3 over 5 clips (micro-batches 3 + 1, one decode reject) against one clip per call
    through `encode_levels` and the writer computing the moments itself."""
    batch = _batch(5, bad=(2,))
    out = EncodeStage(_spec(vae, batch_size=3, latent_dtype=latent_dtype))(batch)
    assert list(out["reason"]) == ["", "", "too short", "", ""] and out["moments"].shape == (5, 3, 2, 4)
    ae = load_autoencoder("cogvideox", str(vae))
    for i in (0, 1, 3, 4):
        ref = encode_levels(ae, batch["frames"][[i]], FACTORS, "causal")
        for s, x in enumerate(ref):
            # Batching changes the convolutions' reduction blocking, so equal to float32 rounding.
            got = torch.from_numpy(out[f"level_{s}"][i])
            want = S.storage_round(x[0], latent_dtype)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 if latent_dtype == "float32" else 2e-2)
            assert torch.equal(S.storage_round(got, latent_dtype), got)  # already rounded to storage precision

    # The same encoded batch written twice: moments merged from the encoder vs recomputed by the writer.
    on_device, on_host = tmp_path / "device", tmp_path / "host"
    for root in (on_device, on_host):
        OutputDir(root).close()
    write_batch(_writer(on_device, vae, latent_dtype), out)
    write_batch(_writer(on_host, vae, latent_dtype), {k: v for k, v in out.items() if k != "moments"})
    a, b = (S.read_shard_meta(S.list_shards(r)[0]) for r in (on_device, on_host))
    # Same float64 formulas on the same float32 values: equal up to float64 summation order.
    for ma, mb in ((a.level_moments(), b.level_moments()), (a.whole_latent_moments(), b.whole_latent_moments())):
        assert torch.equal(ma.count, mb.count)
        torch.testing.assert_close(ma.mean, mb.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ma.m2, mb.m2, rtol=1e-12, atol=1e-12)


def test_an_encode_failure_rejects_only_that_clip(vae, monkeypatch) -> None:
    """Fault encode.oom on one clip of a micro-batch of four: the other three are encoded alone and kept."""
    monkeypatch.setenv(faults.ENV, json.dumps({"encode.oom": ["c2.mp4"]}))
    cfg = tiny_config(Path("/tmp/unused"), Path("/tmp/unused"))
    spec = EncodeSpec.from_config(cfg, [list(s) for s in SHAPES])
    assert spec.oom_names == ("c2.mp4",)
    batch = _batch(4)
    out = EncodeStage(_spec(vae, batch_size=4, oom_names=spec.oom_names))(batch)
    assert list(out["reason"]) == ["", "", "autoencoder error", ""] and list(out["stage"]) == ["", "", "encode", ""]
    assert "fault encode.oom: /p/c2.mp4" in out["detail"][2] and not out["level_1"][2].any()
    clean = EncodeStage(_spec(vae, batch_size=4))(batch)
    for i in (0, 1, 3):
        torch.testing.assert_close(out["level_1"][i], clean["level_1"][i], rtol=1e-5, atol=1e-5)


def test_non_finite_clip_in_a_batch_is_rejected_alone(vae) -> None:
    stage = EncodeStage(_spec(vae, batch_size=3))
    real = stage.ae.encode
    stage.ae.encode = lambda x: real(x) / (torch.arange(x.shape[0]).view(-1, 1, 1, 1, 1) != 1)  # clip 1 -> inf
    out = stage(_batch(3))
    assert list(out["reason"]) == ["", "non-finite latents", ""] and np.isfinite(out["level_0"][[0, 2]]).all()


def test_the_encode_fault_setting_is_checked(monkeypatch) -> None:
    monkeypatch.setenv(faults.ENV, json.dumps({"encode.oom": "c2.mp4"}))
    with pytest.raises(ValueError, match="fault encode.oom must be a list of file base names"):
        EncodeSpec.from_config(tiny_config(Path("/tmp/unused"), Path("/tmp/unused")), [list(s) for s in SHAPES])
