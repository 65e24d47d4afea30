"""DINOv2 ViT in plain PyTorch (no timm / transformers / xformers), for FDD features.

Loads the official facebookresearch/dinov2 checkpoints (`dinov2_vitl14_pretrain.pth`: a plain
state dict) from a LOCAL path, with the official key layout and strict key/shape checks:
    cls_token (1,1,D), pos_embed (1,1+M*M,D) (M=37 for img_size 518), mask_token (1,D),
    patch_embed.proj.{weight,bias}, blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
    mlp.fc1,mlp.fc2,ls2.gamma}.*, norm.{weight,bias}
The architecture (width, depth, patch size) is read from the tensors; heads = width / 64 as in
every DINOv2 size. The feature is the final-LayerNorm CLS token (`x_norm_clstoken`, which the
official `forward` returns). Positional embeddings are resized exactly as the official
`interpolate_pos_encoding` (bicubic with scale factor (n + 0.1) / M, no antialias).
Register-token ("reg4") and SwiGLU (ViT-g) checkpoints are rejected, not guessed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfm_video.weights import check_state_dict

log = logging.getLogger(__name__)

DINOV2_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64


@dataclass(frozen=True)
class DinoV2Config:
    """Architecture of a DINOv2 ViT."""

    embed_dim: int = 1024
    """Token width D (ViT-S 384, B 768, L 1024)."""
    depth: int = 24
    """Number of transformer blocks."""
    patch_size: int = 14
    """Square patch side in pixels."""
    pos_grid: int = 37
    """Side M of the stored positional-embedding grid (518 / 14 = 37 for the released models)."""
    mlp_ratio: float = 4.0
    """MLP hidden width / D."""

    @property
    def num_heads(self) -> int:
        return self.embed_dim // HEAD_DIM

    @property
    def name(self) -> str:
        size = {384: "S", 768: "B", 1024: "L", 1536: "g"}.get(self.embed_dim, f"{self.embed_dim}d")
        return f"ViT-{size}/{self.patch_size} (depth {self.depth})"


VITL14 = DinoV2Config()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape  # B N D
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # B heads N head_dim
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B N D


class DinoVisionTransformer(nn.Module):
    """DINOv2 backbone; `forward` returns the normalised CLS token (B, D)."""

    def __init__(self, cfg: DinoV2Config = VITL14) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # training-only; kept for strict loading
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def interpolate_pos_encoding(self, h: int, w: int) -> Tensor:
        """Positional embeddings for an (h, w)-pixel input, (1, 1 + (h/p)(w/p), D)."""
        p, m = self.cfg.patch_size, self.cfg.pos_grid
        h0, w0 = h // p, w // p
        if h0 == m and w0 == m:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        # The official "+0.1" scale-factor kludge: the bicubic weights depend on it.
        patch_pos = F.interpolate(patch_pos, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic")
        assert patch_pos.shape[-2:] == (h0, w0), patch_pos.shape
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 3, H, W) normalised images, H and W multiples of the patch size -> (B, D)."""
        b, _, h, w = x.shape
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"DINOv2 input {h}x{w} is not a multiple of the patch size {p}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h, w)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 0]


def config_from_state_dict(state: dict[str, Tensor], source: str = "state dict") -> DinoV2Config:
    """Infer the architecture from official-layout tensors; ValueError naming what is off."""
    if any(k.startswith("register_tokens") for k in state):
        raise ValueError(f"{source}: has register tokens (a *_reg4 checkpoint); FDD uses dinov2_vitl14_pretrain.pth")
    if any(".mlp.w12." in k for k in state):
        raise ValueError(f"{source}: SwiGLU blocks (ViT-g) are not supported; FDD uses ViT-L/14")
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            sample = sorted(state)[:6]
            raise ValueError(
                f"{source}: missing '{key}'; not an official DINOv2 backbone state dict (first keys: {sample})"
            )
    d = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    n_pos = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"{source}: pos_embed has {n_pos} patch positions, not a square grid")
    block_ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not block_ids or any(k.startswith("blocks.") and k.split(".")[2].isdigit() for k in state):
        raise ValueError(f"{source}: expected flat 'blocks.<i>.' keys (block_chunks=0 layout)")
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else 4 * d
    if d % HEAD_DIM:
        raise ValueError(f"{source}: width {d} is not a multiple of the head size {HEAD_DIM}")
    return DinoV2Config(embed_dim=d, depth=max(block_ids) + 1, patch_size=patch, pos_grid=grid, mlp_ratio=hidden / d)


def load_dinov2(path: str | Path, device: str | torch.device = "cpu") -> DinoVisionTransformer:
    """Load a DINOv2 backbone from a local official state-dict file (strict). Never downloads.

    Args:
        path: e.g. `dinov2_vitl14_pretrain.pth`; a dict under "model"/"state_dict"/"teacher" is
            not unwrapped (give the released backbone file).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"DINOv2 (FDD) weights: {file} does not exist; download dinov2_vitl14_pretrain.pth "
            "elsewhere and pass its local path (see docs/evaluation.md)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"DINOv2 weights {file}: not a loadable torch state dict ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"DINOv2 weights {file}: expected a flat state dict of tensors")
    cfg = config_from_state_dict(state, str(file))
    if cfg != VITL14:
        log.warning("%s is %s, not the ViT-L/14 the paper's FDD uses", file, cfg.name)
    with torch.device("meta"):  # no random init of ~300M parameters: the checkpoint fills them
        model = DinoVisionTransformer(cfg)
    check_state_dict(model.state_dict(), state, f"DINOv2 weights {file}")
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False).to(device)


def preprocess_dinov2(frames: Tensor) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, 224, 224), ImageNet-normalised.

    Resize = torchvision's `Resize((224, 224), BICUBIC)` on PIL images, i.e. PIL's antialiased
    bicubic on uint8 (what dgm-eval's DINOv2 encoder feeds the model), then /255 and normalise.
    """
    from PIL import Image

    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}")
    arr = frames.cpu().numpy()
    if arr.shape[1:3] != (DINOV2_SIZE, DINOV2_SIZE):
        arr = np.stack([np.asarray(Image.fromarray(f).resize((DINOV2_SIZE, DINOV2_SIZE), Image.BICUBIC)) for f in arr])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def dinov2_features(model: DinoVisionTransformer, frames: Tensor, batch_size: int = 64) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, D) CLS features, in chunks on the model's device."""
    device = model.cls_token.device
    out = [
        model(preprocess_dinov2(frames[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, frames.shape[0], batch_size)
    ]
    return torch.cat(out)


DINOV2_SETTINGS = {
    "network": "DINOv2 backbone (plain-PyTorch port, official state-dict layout)",
    "features": "final-norm CLS token",
    "resize": f"PIL bicubic (antialiased, uint8) to {DINOV2_SIZE}x{DINOV2_SIZE}, aspect not kept",
    "scale": "u8/255, ImageNet mean/std",
    "frames": "every frame of every clip is one image",
}
