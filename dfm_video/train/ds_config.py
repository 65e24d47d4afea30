"""The DeepSpeed JSON, generated from the typed config (never written by hand).

Batch sizes are defined once in `distributed`: global = micro * world_size * accumulation.
"""

from __future__ import annotations

from typing import Any

from dfm_video.config import Config


def gradient_accumulation_steps(cfg: Config, world_size: int) -> int:
    """Accumulation steps so that micro * world_size * steps == global batch; ValueError otherwise."""
    d = cfg.distributed
    per_pass = d.micro_batch_size * world_size
    if d.global_batch_size % per_pass:
        raise ValueError(
            f"distributed.global_batch_size={d.global_batch_size} must be a multiple of "
            f"distributed.micro_batch_size ({d.micro_batch_size}) x world size ({world_size}) = {per_pass}"
        )
    return d.global_batch_size // per_pass


def build_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """DeepSpeed config dict: ZeRO stage, precision, batch sizes, clipping, optional optimizer offload."""
    d = cfg.distributed
    zero: dict[str, Any] = {"stage": d.zero_stage}
    if d.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if d.offload_optimizer:
        if d.zero_stage < 1:
            raise ValueError("distributed.offload_optimizer needs distributed.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if d.zero_stage == 3:
        # Gather whole weights on save so exports do not need zero_to_fp32 (ours rebuilds anyway).
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    conf: dict[str, Any] = {
        "train_batch_size": d.global_batch_size,
        "train_micro_batch_size_per_gpu": d.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": d.precision == "bf16"},
        "fp16": {"enabled": False},
        # The trainer logs its own metrics on log steps; silence DeepSpeed's per-step prints.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        # A client torch AdamW is passed in: allow it with offload instead of forcing DeepSpeed's CPUAdam
        # (which JIT-compiles for a minute and changes numerics).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }
    return conf
