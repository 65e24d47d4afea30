"""3D DiT for Decomposable Flow Matching: per-scale patchify, timestep embedders and heads,
3D RoPE, pluggable attention backends. Architecture only (no deepspeed, no torch.distributed).
Configs come from `dfm_video.config.schema` (plain dataclasses, importable without PyYAML)."""

from __future__ import annotations

from dfm_video.config.schema import DFMConfig, ModelConfig
from dfm_video.models.attention import attention, available_attention_backends, resolve_attention_backend
from dfm_video.models.dit import DiT3D
from dfm_video.models.flops import model_flops, parameter_counts, training_flops
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.models.registry import SIZES, ModelSize, resolve_size


def build_model(model_cfg: ModelConfig, dfm_cfg: DFMConfig) -> DiT3D:
    """The DiT3D described by the config (registry size + overrides), DiT-initialised."""
    return DiT3D(model_cfg, dfm_cfg)


__all__ = [
    "SIZES",
    "DiT3D",
    "ModelSize",
    "attention",
    "available_attention_backends",
    "build_model",
    "model_flops",
    "parameter_counts",
    "resolve_attention_backend",
    "resolve_size",
    "stage_patch_sizes",
    "token_grid",
    "training_flops",
]
