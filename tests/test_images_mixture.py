"""Images as T = 1 and joint image + video data: the paper's image configs, standardisation that
follows the data, the mixing schedule and sampler, and the bad inputs of a mix (no launcher)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from image_helpers import FLUX_SCALE, FLUX_SHIFT, skimage_data_dir

from dfm_video.autoencoders import autoencoder_info, load_autoencoder
from dfm_video.config import load_config
from dfm_video.config.schema import MixSource
from dfm_video.data.mixture import open_data, skip_temporal
from dfm_video.data.sampler import ResumableSampler, integer_shares
from dfm_video.models import build_model
from dfm_video.models.patch import stage_patch_sizes, token_grid

# ----------------------------------------------------------------------------- configs


def test_imagenet512_configs_load_and_give_equal_token_grids(tmp_path: Path) -> None:
    import diffusers

    pre = load_config("preprocess/imagenet512.yaml")
    assert pre.preprocess.input_type == "images" and pre.preprocess.autoencoder == "kl"
    assert list(pre.preprocess.resolution) == [512, 512]
    cfg = load_config("imagenet512.yaml")
    assert (cfg.model.name, cfg.model.in_channels, cfg.model.num_classes) == ("DiT3D-XL", 16, 1000)
    assert cfg.dfm.stage_probs == [0.9, 0.1] and cfg.dfm.standardize is False
    assert [list(f) for f in cfg.dfm.factors] == [list(f) for f in pre.dfm.factors] == [[1, 2, 2]]
    assert (cfg.sample.tau, cfg.sample.cfg_scale, cfg.sample.steps) == (0.7, 1.5, [30, 10])
    assert cfg.distributed.global_batch_size == 256 and cfg.optim.betas == (0.9, 0.99)

    # A FLUX-shaped VAE config (16 channels, 8x spatial, shift + scale), random and tiny, saved as users get it.
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16,
        norm_num_groups=2,
        layers_per_block=1,
        scaling_factor=FLUX_SCALE,
        shift_factor=FLUX_SHIFT,
    ).save_pretrained(tmp_path / "vae")
    from data_pipeline.preprocess import plan_levels

    pre = load_config("preprocess/imagenet512.yaml", [f"preprocess.autoencoder_path={tmp_path / 'vae'}"])
    codec, levels = plan_levels(pre)
    assert levels == [[16, 1, 32, 32], [16, 1, 64, 64]]  # the 256 px and 512 px stages
    assert codec["scaling"] == {"offset": [FLUX_SHIFT] * 16, "multiplier": [FLUX_SCALE] * 16}
    patches = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)
    grids = [token_grid(lv[1:], p, cfg.dfm.temporal_mode) for lv, p in zip(levels, patches)]
    assert grids == [(1, 32, 32), (1, 32, 32)]  # DiT-XL/2's 1024 tokens at 512 px


def test_flux_style_vae_applies_shift_then_scale_on_a_real_photo(image_shards) -> None:
    import diffusers
    import numpy as np
    from PIL import Image

    ae = load_autoencoder("kl", image_shards["vae"])
    assert ae.latent_channels == 16 and autoencoder_info("kl", image_shards["vae"]) == ae.describe()
    img = np.asarray(Image.open(skimage_data_dir() / "astronaut.png").convert("RGB").resize((32, 32)), dtype=np.float32)
    x = torch.from_numpy(img / 127.5 - 1.0).permute(2, 0, 1)[None, :, None]  # (1, 3, 1, 32, 32)
    vae = diffusers.AutoencoderKL.from_pretrained(image_shards["vae"]).eval()
    with torch.no_grad():
        raw = vae.encode(x[:, :, 0]).latent_dist.mean[:, :, None].double()
    z = ae.encode(x)
    assert torch.allclose(z.double(), (raw - FLUX_SHIFT) * FLUX_SCALE, atol=1e-6)
    assert torch.allclose(ae.scaling.unscale(z).double(), raw, atol=1e-6)


def test_images_with_a_temporal_factor_are_refused_in_the_preprocess_config() -> None:
    with pytest.raises(ValueError, match=r"dfm.factors.*input_type='images'.*\[\[2, 2, 2\]\]"):
        load_config("preprocess/imagenet512.yaml", ["dfm.factors=[[2,2,2]]"])


# ----------------------------------------------------------------------------- single datasets


def _cfg(*overrides: str):
    return load_config("tiny.yaml", ["train.log_every=1", *overrides])


def test_standardisation_follows_the_data_unless_set(tiny_shards, image_shards, capsys) -> None:
    video = open_data(_cfg(f"data.shards={tiny_shards}", "dfm.standardize=null")).buckets[0]
    image = open_data(_cfg(f"data.shards={image_shards['pixel']}", "dfm.standardize=null")).buckets[0]
    forced = open_data(_cfg(f"data.shards={image_shards['pixel']}", "dfm.standardize=true")).buckets[0]
    assert (video.stats is not None, image.stats is None, forced.stats is not None) == (True, True, True)
    assert (video.cfg.dfm.standardize, image.cfg.dfm.standardize) == (True, False)  # the saved config says what ran
    log = capsys.readouterr().out
    assert "dfm.standardize=true" in log and "(default for video data)" in log
    assert "dfm.standardize=false" in log and "(default for image (T = 1) data)" in log and "(set in the config)" in log


def test_an_image_dataset_with_a_temporal_factor_is_refused(image_shards) -> None:
    with pytest.raises(ValueError, match=r"shards-pixel holds images \(latent T = 1\) but dfm.factors=\[\[2, 2, 2\]\]"):
        open_data(_cfg(f"data.shards={image_shards['pixel']}", "dfm.factors=[[2,2,2]]", "dfm.standardize=false"))


def test_one_model_takes_t1_and_video_batches_in_both_temporal_modes() -> None:
    for mode, T in (("causal", 5), ("uniform", 4)):
        cfg = _cfg(
            "model.patch_size=[2,2,2]", "dfm.factors=[[2,2,2]]", f"dfm.temporal_mode={mode}", "model.in_channels=3"
        )
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.dfm).eval()
        for p in model.final_layers.parameters():  # non-zero heads so the outputs say something
            torch.nn.init.normal_(p, std=0.1)
        for shape, factors in (((T, 8, 8), cfg.dfm.factors), ((1, 8, 8), skip_temporal(cfg.dfm.factors))):
            from dfm_video.dfm import decompose

            levels = decompose(torch.randn(2, 3, *shape), factors, mode)
            out = model(levels, torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool), torch.tensor([0, 1]))
            assert [o.shape for o in out] == [lv.shape for lv in levels]
            assert all(torch.isfinite(o).all() and o.abs().sum() > 0 for o in out)


# ----------------------------------------------------------------------------- schedule and sampler


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.3, 0.2], [1.0, 1.0, 1.0], [0.9, 0.1]])
def test_the_mix_holds_within_every_step_across_ranks_and_exactly_over_many_steps(weights) -> None:
    shares = integer_shares(weights)
    assert [s / sum(shares) for s in shares] == pytest.approx([w / sum(weights) for w in weights], abs=5e-4)
    sizes, M, W, accum, steps = [37, 23, 11][: len(weights)], 2, 2, 3, 400
    samplers = [
        ResumableSampler(sizes, shares, global_batch=M * W * accum, micro_batch=M, rank=r, world_size=W, seed=3)
        for r in range(W)
    ]
    streams = [iter(s) for s in samplers]
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    total = Counter()
    for _ in range(steps):
        step = Counter()
        for _ in range(accum):
            for r in range(W):
                idx = next(streams[r])
                d = next(b for b in range(len(sizes)) if bounds[b] <= idx[0] < bounds[b + 1])
                assert len(idx) == M and all(bounds[d] <= i < bounds[d + 1] for i in idx)  # one bucket, one shape
                step[d] += 1
        slots = W * accum
        for d, s in enumerate(shares):  # every optimizer step holds the mix to within one micro-batch
            assert abs(step[d] - slots * s / sum(shares)) < 1.0 + 1e-9, (step, shares)
        total.update(step)
    n = steps * W * accum
    for d, s in enumerate(shares):
        assert abs(total[d] - n * s / sum(shares)) < 1.0 + 1e-9


def test_each_bucket_sees_every_sample_once_per_epoch_and_resumes_exactly() -> None:
    sizes, M, shares = [10, 7], 2, [2, 1]

    def stream(W: int, start: int, n: int) -> list[list[int]]:
        its = [
            iter(
                ResumableSampler(
                    sizes, shares, global_batch=2 * M, micro_batch=M, rank=r, world_size=W, seed=5, start=start
                )
            )
            for r in range(W)
        ]
        return [next(its[r]) for _ in range(n) for r in range(W)]  # global micro-batch order

    full = stream(2, 0, 30)
    per_bucket = [[i for mb in full if mb[0] < 10 for i in mb], [i for mb in full if mb[0] >= 10 for i in mb]]
    assert sorted(per_bucket[0][:10]) == list(range(10))  # an epoch of bucket 0: 5 micro-batches, every sample once
    assert len(set(per_bucket[1][:6])) == 6 and set(per_bucket[1][:6]) <= set(
        range(10, 17)
    )  # 3 micro-batches, tail dropped
    assert per_bucket[0][:10] != per_bucket[0][10:20]  # a new permutation each epoch
    for k in (1, 7, 13):  # resume at optimizer-step boundaries of 2 ranks x 1 micro-batch
        assert stream(2, k * 2 * M, 30 - k) == full[2 * k :]
        assert stream(1, k * 2 * M, 2 * (30 - k)) == full[2 * k :]  # on another world size the order is the same


# ----------------------------------------------------------------------------- mixes of real shards


def _mix_cfg(mix: list[tuple[Path, float]], *overrides: str):
    cfg = _cfg("data.shards=", *overrides)
    cfg.data.mix = [MixSource(str(p), w) for p, w in mix]
    return cfg


def test_a_video_and_image_mix_skips_temporal_factors_for_images(tiny_shards, image_shards) -> None:
    cfg = _mix_cfg(
        [(tiny_shards, 0.75), (image_shards["pixel"], 0.25)],
        "model.patch_size=[2,2,2]",
        "dfm.factors=[[2,2,2]]",
        "dfm.standardize=false",
        "model.num_classes=12",
    )
    data = open_data(cfg)
    video, image = data.buckets
    assert [video.weight, image.weight] == [0.75, 0.25]
    assert video.cfg.dfm.factors == [(2, 2, 2)] and video.redecompose  # stored [1,2,2], decomposed in time
    assert image.cfg.dfm.factors == [(1, 2, 2)] and not image.redecompose  # images: temporal factor skipped
    assert data.labels[: len(video.info.labels)] == video.info.labels
    assert set(data.labels) == set(video.info.labels) | {"scene", "object"}
    seen = Counter()
    for levels, labels in _take(data.batches(rank=0, world_size=1, start=0, device=torch.device("cpu")), 8):
        T = levels[-1].shape[2]
        seen[T] += 1
        assert [lv.shape[2:] for lv in levels] == ([(5, 4, 4), (9, 8, 8)] if T == 9 else [(1, 4, 4), (1, 8, 8)])
        names = [data.labels[i] for i in labels.tolist()]
        assert all(n in ("scene", "object") for n in names) == (T == 1)
    assert seen == {9: 6, 1: 2}
    meta = data.dataset_meta()
    assert [b["latent_shape"] for b in meta["buckets"]] == [[48, 9, 8, 8], [48, 1, 8, 8]]
    assert [b["factors"] for b in meta["buckets"]] == [[[2, 2, 2]], [[1, 2, 2]]]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_mix_bad_inputs_name_the_datasets_and_values(tiny_shards, image_shards) -> None:
    with pytest.raises(
        ValueError,
        match=r"different latent channels.*shards.*48 channels.*shards-kl.*16 channels, autoencoder 'kl:flux-vae",
    ):
        open_data(_mix_cfg([(tiny_shards, 1.0), (image_shards["kl"], 1.0)]))
    with pytest.raises(
        ValueError,
        match=r"data.mix\[1\] 'shards-pixel' .* has 8 usable clips, fewer than one micro-batch .*micro_batch_size=9",
    ):
        open_data(
            _mix_cfg(
                [(tiny_shards, 1.0), (image_shards["pixel"], 1.0)],
                "distributed.micro_batch_size=9",
                "distributed.global_batch_size=18",
                "model.num_classes=12",
            )
        )
    with pytest.raises(ValueError, match=r"weights \[\('shards-pixel', 0.0001\)\] are below 1/1000"):
        open_data(_mix_cfg([(tiny_shards, 1.0), (image_shards["pixel"], 1e-4)], "model.num_classes=12"))
    with pytest.raises(ValueError, match=r"model.num_classes=3 but the datasets of data.mix have \d+ distinct labels"):
        open_data(_mix_cfg([(tiny_shards, 1.0), (image_shards["pixel"], 1.0)], "model.num_classes=3"))
    with pytest.raises(ValueError, match=r"data.shards or data.mix, not both"):
        load_config("tiny.yaml", ["data.mix=[{shards: /x, weight: 1}]"])
    with pytest.raises(ValueError, match=r"data.mix\[0\].weight': expected > 0, got -1"):
        load_config("tiny.yaml", ["data.shards=", "data.mix=[{shards: /x, weight: -1}]"])


# ----------------------------------------------------------------------------- evaluation inputs


def test_evaluation_reads_images_as_one_frame_videos_and_only_the_listed_samples(tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from dfm_video.eval.videos import list_videos, read_video

    rng = np.random.default_rng(0)
    pixels = {
        name: rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for name in ("a.png", "b.png", "contact_sheet.png")
    }
    for name, arr in pixels.items():
        Image.fromarray(arr).save(tmp_path / name)
    Image.open(skimage_data_dir() / "rocket.jpg").save(tmp_path / "c.jpg")
    assert [p.name for p in list_videos(tmp_path)] == ["a.png", "b.png", "c.jpg", "contact_sheet.png"]
    frames = read_video(tmp_path / "a.png", 1)
    assert frames.shape == (1, 12, 20, 3) and torch.equal(
        frames[0], torch.from_numpy(pixels["a.png"])
    )  # PNG is lossless
    assert read_video(tmp_path / "c.jpg", 1).shape == (1, 427, 640, 3)
    with pytest.raises(ValueError, match="is an image, so clips have 1 frame"):
        read_video(tmp_path / "a.png", 2)
    # a dfm_video.sample output folder: its samples.json names the samples (not the contact sheet)
    (tmp_path / "samples.json").write_text(
        json.dumps({"samples": ["out/b.png", "out/a.png"], "contact_sheet": "out/contact_sheet.png"})
    )
    assert [p.name for p in list_videos(tmp_path)] == ["a.png", "b.png"]
