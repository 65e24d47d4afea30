"""Check an autoencoder folder before a long preprocessing job: load it, encode one clip exactly as
preprocessing would (same decoder, frame count, fps, resize/crop, dtype) and print the latent shape
and scale.

    python -m data_pipeline.check_autoencoder --config preprocess/k700.yaml \
        --path /models/CogVideoX-2b/vae --clip /data/kinetics700/clips/train/abseiling/xyz_000010_000020.mp4

`--path` takes the VAE folder (config.json + diffusion_pytorch_model.safetensors) or a diffusers
pipeline folder with a vae/ subfolder; hub ids are refused (weights are never downloaded). The
scaled latents of a real clip should have a standard deviation of the order of 1; a value far from
that points at a wrong scaling factor (or a wrong `preprocess.autoencoder` kind). Exit status 0 when
the clip encodes, 2 with a message naming the problem otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import torch

from data_pipeline.decode import ClipRejected, DecodeParams, decode_clip, with_available_decoder
from data_pipeline.encode import frames_to_video
from dfm_video.autoencoders import DTYPES, load_autoencoder
from dfm_video.config.loader import load_config


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="data_pipeline.check_autoencoder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="preprocess/k700.yaml", help="preprocessing config (path or name)")
    ap.add_argument("--path", default=None, help="autoencoder folder (sets preprocess.autoencoder_path)")
    ap.add_argument("--clip", required=True, help="one video (or image) file to encode")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    return ap.parse_args(argv)


def check(args: argparse.Namespace) -> dict:
    overrides = list(args.overrides)
    if args.path is not None:
        overrides.append(f"preprocess.autoencoder_path={args.path}")
    cfg = with_available_decoder(load_config(args.config, overrides))
    p = cfg.preprocess
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[p.autoencoder_dtype] if device.type == "cuda" else torch.float32
    start = time.time()
    ae = load_autoencoder(p.autoencoder, p.autoencoder_path, device=device, dtype=dtype, pixel_patch=p.pixel_patch)
    loaded = time.time() - start
    try:
        clip = decode_clip(args.clip, p.input_type == "images", DecodeParams.from_config(p))
    except ClipRejected as exc:
        raise ValueError(f"--clip {args.clip}: {exc.reason}: {exc.detail}") from exc
    expected = ae.latent_shape(*clip.frames.shape[:3])
    start = time.time()
    latents = ae.encode(frames_to_video(clip.frames[None], ae.device))
    encoded = time.time() - start
    return {
        "autoencoder": f"{p.autoencoder} ({ae.id})",
        "frames": tuple(clip.frames.shape),
        "latent": tuple(latents.shape[1:]),
        "expected": expected,
        "std": float(latents.float().std()),
        "mean": float(latents.float().mean()),
        "scaling": ae.scaling.to_dict(),
        "device": f"{device} {str(dtype).removeprefix('torch.')}",
        "seconds": (loaded, encoded),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        r = check(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if r["latent"] != tuple(r["expected"]):
        print(f"error: latent shape {r['latent']} differs from the codec's geometry {r['expected']}", file=sys.stderr)
        return 2
    scale = ", ".join(f"{k} {v[0]:.4g}" + (" ..." if len(set(v)) > 1 else "") for k, v in r["scaling"].items())
    print(f"autoencoder: {r['autoencoder']} on {r['device']}")
    print(f"clip: {args.clip} -> frames {r['frames']} (F, H, W, 3)")
    print(f"latent shape (C, T, h, w): {r['latent']}")
    print(f"latent scale: std {r['std']:.4f}, mean {r['mean']:.4f} (after the codec's scaling: {scale})")
    print(f"time: load {r['seconds'][0]:.1f} s, encode {r['seconds'][1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
