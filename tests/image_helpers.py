"""Real photographs for the image (T = 1) tests, their shards made by the real Ray pipeline, and the
tiny random DINOv2 that FDD is computed with in the evaluation tests.

The photographs ship inside scikit-image's wheel (skimage/data/*.png|jpg, installed with the dev
extra): they are read from the installed package folder, never fetched (skimage.data's pooch
downloads are not used).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
from train_helpers import ROOT, cpu_env

from dfm_video.eval.dinov2 import DinoV2Config, DinoVisionTransformer

# label -> photographs of scikit-image's wheel (camera.png is greyscale: the decoder makes it RGB)
PHOTOS = {
    "scene": ["astronaut.png", "chelsea.png", "camera.png", "hubble_deep_field.jpg"],
    "object": ["coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png"],
}
# No DINOv2 weights exist offline: FDD runs on this random one, saved and read back as real weights are.
TINY_DINOV2 = DinoV2Config(embed_dim=64, depth=1, patch_size=14, pos_grid=4)
# A FLUX-style KL autoencoder config (16 latent channels, shift and scale as FLUX.1's), tiny and random.
FLUX_SHIFT, FLUX_SCALE = 0.1159, 0.3611


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed (pip install -e '.[dev]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def save_tiny_dinov2(path: Path, seed: Optional[int] = None) -> Path:
    """A random TINY_DINOV2's state dict at `path`. `seed` seeds torch's global RNG first; None draws
    from it as it stands (so two calls give different weights)."""
    if seed is not None:
        torch.manual_seed(seed)
    torch.save(DinoVisionTransformer(TINY_DINOV2).state_dict(), path)
    return path


def make_photo_folder(folder: Path, broken: bool = True) -> Path:
    """ImageNet layout {label}/{name}: the 8 photographs, plus one file that is not an image."""
    data = skimage_data_dir()
    for label, names in PHOTOS.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(data / name, folder / label / name)
    if broken:
        (folder / "object" / "broken.png").write_text("not a PNG\n")
    return folder


def save_flux_style_vae(folder: Path) -> Path:
    """A tiny random diffusers AutoencoderKL with FLUX's 16 channels, shift_factor and scaling_factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=FLUX_SCALE,
        shift_factor=FLUX_SHIFT,
    )
    vae.save_pretrained(folder)
    return folder


# configs/preprocess/imagenet512.yaml scaled down to this 2-core machine
SMALL_MACHINE = [
    "preprocess.labels_file=",
    "preprocess.autoencoder_dtype=float32",
    "preprocess.samples_per_shard=4",
    "preprocess.batch_size=4",
    "preprocess.decode_cpus=0.5",
    "preprocess.encode_actors=1",
    "preprocess.encode_cpus=0.5",
    "preprocess.encode_gpus=0.0",
    "preprocess.writer_cpus=0.25",
    "preprocess.num_cpus=2",
    "preprocess.progress=false",
]


def make_image_shards(out: Path) -> dict[str, Path]:
    """Photos -> the real Ray pipeline (T = 1) with configs/preprocess/imagenet512.yaml, twice in one Ray
    session (a subprocess): the FLUX-style KL codec (16 ch) and the pixel codec (48 ch: mixes with tiny_shards)."""
    photos = make_photo_folder(out / "photos")
    vae = save_flux_style_vae(out / "flux-vae")
    paths = {"photos": photos, "vae": vae, "kl": out / "shards-kl", "pixel": out / "shards-pixel"}
    r = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=cpu_env(),
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return paths


def _preprocess_both(out: Path) -> None:
    import ray

    from data_pipeline.preprocess import run
    from dfm_video.config import load_config

    common = [f"preprocess.input_dir={out / 'photos'}", "preprocess.resolution=[32,32]", *SMALL_MACHINE]
    runs = [
        [f"preprocess.output_dir={out / 'shards-kl'}", f"preprocess.autoencoder_path={out / 'flux-vae'}"],
        [
            f"preprocess.output_dir={out / 'shards-pixel'}",
            "preprocess.autoencoder=pixel",
            "preprocess.pixel_patch=[1,4,4]",
        ],
    ]
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        for extra in runs:
            print(
                run(load_config(ROOT / "configs" / "preprocess" / "imagenet512.yaml", common + extra)).line(),
                flush=True,
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    _preprocess_both(Path(sys.argv[1]))
