"""DiT3D: a stock DiT (adaLN-zero, full attention over T*H*W tokens, 3D RoPE) with DFM's three
per-scale parts (DFM_METHOD.md section 3): per-stage patch embedders whose token embeddings are
summed, per-stage timestep embedders summed into the conditioning, and per-stage output heads.

Convention: t = 0 is pure noise, t = 1 is data. Shapes: a level is (B, C, T_s, H_s, W_s) (stages
coarse to fine), tokens (B, N, D) with N = Tg*Hg*Wg identical for every stage, conditioning c
(B, D). An image is a video with T = 1: same model, same code path.
Architecture only: no distributed code, no randomness in forward (label dropout for CFG is the
trainer's job; `null_class` is the label of the unconditional branch).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import kernels
from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.models.attention import attention, resolve_attention_backend
from dfm_video.models.checkpointing import run_block
from dfm_video.models.ops import (
    apply_rope,
    gated_residual,
    gated_residual_modulated_norm,
    modulated_norm,
    rms_norm,
    rope_tables,
)
from dfm_video.models.patch import (
    downsample_mean,
    patchify,
    stage_patch_sizes,
    stage_upsample_factors,
    token_grid,
    unpatchify,
    upsample_nearest,
)
from dfm_video.models.registry import resolve_size

log = logging.getLogger(__name__)

FREQ_DIM = 256  # DiT's sinusoidal timestep embedding size
TIME_FACTOR = 1000.0  # (ours, as Flux/SD3) t in [0, 1] -> [0, 1000] so DiT's frequencies resolve it


def timestep_embedding(t: Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> Tensor:
    """DiT's sinusoidal embedding of t (B,) in [0, 1] (scaled by TIME_FACTOR) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * TIME_FACTOR)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, D): sinusoid (256) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    """Multi-head full attention with optional RMS QK-norm and 3D RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        # The attention core (q, k, v (B, Hd, N, Dh), backend) -> (B, Hd, N, Dh). A seam for
        # parallelism applied from outside the model: dfm_video/parallel swaps in a sequence-parallel
        # core (all-to-all around the same `attention`) without this file knowing about processes.
        self.core_attention = attention

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, backend: str, kernel_backend: str) -> Tensor:
        """x (B, N, D), cos/sin (N, Dh/2); `backend` the attention, `kernel_backend` the RoPE one."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm), rms_norm(k, self.k_norm)
        q, k = apply_rope(q, k, cos, sin, kernel_backend)  # (B, Hd, N, Dh), one launch for both
        out = self.core_attention(q, k, v, backend)  # (B, Hd, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """adaLN-zero transformer block: 6 modulation vectors from SiLU(c), zero-initialised."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn = SelfAttention(dim, num_heads, qk_norm)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, cos: Tensor, sin: Tensor, backend: str, kernel_backend: str) -> Tensor:
        """x (B, N, D), c (B, D), cos/sin (N, Dh/2) -> (B, N, D).

        `backend`: the resolved attention backend; `kernel_backend`: "triton" or "torch" for the
        fused adaLN/RoPE ops. The attention residual and the MLP's pre-norm are one op (with
        Triton, one pass: h is normalised from registers instead of being read back).
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        a = modulated_norm(x, shift_a, scale_a, kernel_backend)
        y = self.attn(a, cos, sin, backend, kernel_backend)
        h, m = gated_residual_modulated_norm(x, gate_a, y, shift_m, scale_m, kernel_backend)
        y = self.fc2(F.gelu(self.fc1(m), approximate="tanh"))
        return gated_residual(h, gate_m, y, kernel_backend)


class FinalLayer(nn.Module):
    """One stage's head: adaLN (shift, scale) + Linear to patch_volume * C, both zero-initialised."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor, kernel_backend: str) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulated_norm(x, shift, scale, kernel_backend))


class DiT3D(nn.Module):
    """DFM video DiT. `forward(levels, t, active, y)` returns every stage's velocity (see forward)."""

    def __init__(self, model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> None:
        super().__init__()
        size = resolve_size(model_cfg)
        S = dfm_cfg.num_stages
        if S < 1 or len(dfm_cfg.factors) != S - 1:
            raise ValueError(f"dfm.factors has {len(dfm_cfg.factors)} entries; num_stages={S} needs {S - 1}")
        self.model_cfg, self.dfm_cfg = model_cfg, dfm_cfg
        self.num_stages = S
        self.in_channels = model_cfg.in_channels
        self.hidden_size = D = size.hidden_size
        self.num_heads = size.num_heads
        self.head_dim = D // size.num_heads
        self.temporal_mode = dfm_cfg.temporal_mode
        self.null_class = model_cfg.num_classes  # label of the unconditional (CFG) branch
        self.kernels = model_cfg.kernels  # fused-op switch, resolved per device by kernels_backend
        self.patches = stage_patch_sizes(model_cfg.patch_size, dfm_cfg.factors)
        C = self.in_channels
        # Optional per-stage nearest upsampling before the embedder (averaged back after the head):
        # a coarse stage then uses a pretrained model's larger patch on the same token grid.
        self.upsample = stage_upsample_factors(model_cfg.upsample_factors, S)
        self.embed_patches = [tuple(p * u for p, u in zip(pa, up)) for pa, up in zip(self.patches, self.upsample)]
        vols = [math.prod(p) * C for p in self.embed_patches]

        self.patch_embed = nn.ModuleList(nn.Linear(v, D) for v in vols)
        self.t_embedders = nn.ModuleList(TimestepEmbedder(D) for _ in range(S))
        self.y_embedder = nn.Embedding(model_cfg.num_classes + 1, D)  # +1: the null class
        # A single-stage model has nothing to tell apart: it stays exactly the plain-FM DiT.
        self.stage_embedder = nn.Embedding(S, D) if model_cfg.stage_embedding and S > 1 else None
        self.blocks = nn.ModuleList(
            DiTBlock(D, size.num_heads, model_cfg.mlp_ratio, model_cfg.qk_norm) for _ in range(size.depth)
        )
        self.final_layers = nn.ModuleList(FinalLayer(D, v) for v in vols)
        self._backends: dict[str, str] = {}
        self._kernel_backends: dict[str, str] = {}
        self._compile_decided: dict[str, bool] = {}
        self.initialize_weights()
        if model_cfg.compile is True:
            self.compile_blocks()

    def compile_blocks(self) -> None:
        """Regional compilation: each block compiled in place (state_dict keys stay free of
        `_orig_mod.`). The blocks share one code object, so Dynamo compiles one graph per input
        signature and every block reuses it: training and sampling, every DFM stage (same token
        grid), no recompilation per block."""
        for block in self.blocks:
            if block._compiled_call_impl is None:
                block.compile()

    def compiles_on(self, device: torch.device) -> bool:
        """Whether the blocks run compiled on `device` (`model.compile`: true, false or auto)."""
        key = str(device)
        if key not in self._compile_decided:
            flag = self.model_cfg.compile
            if flag == "auto":
                swapped = any(b.attn.core_attention is not attention for b in self.blocks)
                flag = torch.device(device).type == "cuda" and not swapped
                why = "attention core replaced from outside" if swapped else f"device {torch.device(device).type}"
                log.info("model.compile=auto on %s: %s (%s)", device, "compiled blocks" if flag else "eager", why)
            self._compile_decided[key] = bool(flag)
        return self._compile_decided[key]

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's init: xavier Linears, normal(0.02) embeddings/timestep MLPs, zero adaLN and heads."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        if self.stage_embedder is not None:
            nn.init.normal_(self.stage_embedder.weight, std=0.02)
        for emb in self.t_embedders:
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            if block.attn.q_norm is not None:
                nn.init.ones_(block.attn.q_norm)
                nn.init.ones_(block.attn.k_norm)
        for head in self.final_layers:
            for lin in (head.adaLN_modulation[-1], head.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def attention_backend(self, device: torch.device) -> str:
        """The resolved `model_cfg.attention` backend on `device` (resolved once per device)."""
        key = str(device)
        if key not in self._backends:
            self._backends[key] = resolve_attention_backend(self.model_cfg.attention, device, self.head_dim)
        return self._backends[key]

    def kernels_backend(self, device: torch.device) -> str:
        """The resolved `model_cfg.kernels` switch on `device`: "triton" or "torch" (once per device).

        `auto` picks Triton on CUDA when triton is importable, except when the blocks are
        torch.compile'd: Inductor fuses the torch references itself and the Triton autograd
        Functions are not tested under compile (docs/kernels.md), so `auto` + `compile` means
        torch. An explicit `triton` that cannot run raises RuntimeError naming what is missing.
        """
        key = str(device)
        if key not in self._kernel_backends:
            name = self.model_cfg.kernels
            if name == "auto" and self.compiles_on(device):
                resolved = "torch"
            else:
                try:
                    resolved = kernels.resolve_backend(name, device)
                except (RuntimeError, ValueError) as e:
                    raise type(e)(f"model.kernels={name!r} on {device}: {e}") from e
            log.info("model.kernels=%r on %s: %s ops", name, device, resolved)
            self._kernel_backends[key] = resolved
        return self._kernel_backends[key]

    def token_grid(self, shapes: list[tuple[int, int, int]]) -> tuple[int, int, int]:
        """The common token grid of the stages' (T, H, W) shapes; ValueError if they differ."""
        grids = []
        for s, (shape, patch) in enumerate(zip(shapes, self.patches)):
            try:
                grids.append(token_grid(shape, patch, self.temporal_mode))
            except ValueError as e:
                where = f"stage {s + 1} of {self.num_stages} (shape {tuple(shape)}, patch {patch})"
                raise ValueError(f"{where}: {e}") from e
        if any(g != grids[0] for g in grids):
            desc = ", ".join(
                f"stage {s + 1}: shape {tuple(sh)} patch {p} -> grid {g}"
                for s, (sh, p, g) in enumerate(zip(shapes, self.patches, grids))
            )
            raise ValueError(f"stages give different token grids ({desc}); check dfm.factors and model.patch_size")
        return grids[0]

    def forward(self, levels: list[Tensor], t: Tensor, active: Tensor, y: Tensor) -> list[Tensor]:
        """Velocity of every stage.

        levels: S tensors (B, C, T_s, H_s, W_s), coarse to fine (noisy x_t per stage).
        t: (B, S) in [0, 1] (0 noise, 1 data). active: (B, S) bool. y: (B,) int labels in
        [0, num_classes] (num_classes = null class). Returns S tensors shaped like `levels`.
        Inactive stages have their input multiplied by 0 and their timestep embedder sees t = 0.
        """
        S = self.num_stages
        if len(levels) != S:
            raise ValueError(f"expected {S} levels (coarse to fine), got {len(levels)}")
        B = levels[0].shape[0]
        for s, x in enumerate(levels):
            if x.dim() != 5 or x.shape[0] != B or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"stage {s + 1}: expected (B={B}, C={self.in_channels}, T, H, W), got {tuple(x.shape)}"
                )
        if t.shape != (B, S) or active.shape != (B, S):
            raise ValueError(f"t and active must be (B, S) = ({B}, {S}), got {tuple(t.shape)}, {tuple(active.shape)}")
        grid = self.token_grid([tuple(x.shape[2:]) for x in levels])
        act = active.to(torch.bool)

        x = None  # (B, N, D): the stages' patch embeddings, summed
        for s, (lvl, patch, up, embed) in enumerate(zip(levels, self.embed_patches, self.upsample, self.patch_embed)):
            masked = upsample_nearest(lvl * act[:, s].to(lvl.dtype).view(B, 1, 1, 1, 1), up)
            tok = embed(patchify(masked, patch, self.temporal_mode).to(embed.weight.dtype))
            x = tok if x is None else x + tok

        t_eff = t.float() * act.float()  # inactive stages: t = 0
        c = self.y_embedder(y)  # (B, D)
        for s, emb in enumerate(self.t_embedders):
            c = c + emb(t_eff[:, s])
        if self.stage_embedder is not None:
            # the trained stage Q: the last active one per sample
            stage = (torch.arange(S, device=act.device) * act.long()).amax(dim=1)
            c = c + self.stage_embedder(stage)

        cos, sin = rope_tables(grid, self.head_dim, self.model_cfg.rope_theta, x.device)
        backend = self.attention_backend(x.device)
        if self.compiles_on(x.device):
            self.compile_blocks()
        kbackend = self.kernels_backend(x.device)
        policy = self.model_cfg.activation_checkpointing if self.training and torch.is_grad_enabled() else "none"
        for block in self.blocks:
            x = run_block(block, policy, x, c, cos, sin, backend, kbackend)

        return [
            downsample_mean(
                unpatchify(head(x, c, kbackend), grid, patch, self.in_channels, self.temporal_mode, lvl.shape[2]), up
            )
            for head, patch, up, lvl in zip(self.final_layers, self.embed_patches, self.upsample, levels)
        ]
