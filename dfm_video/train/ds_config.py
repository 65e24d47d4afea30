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


# Keys the typed config owns: an override may not set them (one source of truth for batch sizes,
# ZeRO stage, precision and clipping).
OWNED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16",
    "fp16",
    "optimizer",
    "scheduler",
    "zero_optimization.stage",
    "zero_optimization.offload_optimizer",
)
# Top-level DeepSpeed sections a user may add or tune through distributed.deepspeed_overrides.
OVERRIDABLE = (
    "zero_optimization",
    "data_types",
    "communication_data_type",
    "seq_parallel_communication_data_type",
    "prescale_gradients",
    "gradient_predivide_factor",
    "steps_per_print",
    "wall_clock_breakdown",
    "memory_breakdown",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "comms_logger",
    "flops_profiler",
    "timers",
    "activation_checkpointing",
    "aio",
    "checkpoint",
    "compile",
    "dump_state",
)
# Buckets (elements) for ZeRO-2/3 reductions and gathers. DeepSpeed's defaults are 5e8 elements;
# 2e8 keeps the bucket buffers (x2 with overlap_comm, in fp32 with fp32 accumulation: ~1.6 GB each
# at 5e8) small next to a DiT3D-XL's activations while each NCCL call still moves hundreds of MB,
# well past the size where bus bandwidth saturates.
BUCKET = 200_000_000


def build_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """DeepSpeed config dict: ZeRO stage, precision, batch sizes, clipping, optional optimizer offload,
    then `distributed.deepspeed_overrides` merged in and validated."""
    d = cfg.distributed
    zero: dict[str, Any] = {"stage": d.zero_stage}
    if d.zero_stage >= 1:
        # contiguous_gradients: copy reduced gradients into one flat buffer (no fragmentation at scale).
        zero.update(contiguous_gradients=True, reduce_bucket_size=BUCKET)
    if d.zero_stage >= 2:
        # overlap_comm: reduce-scatter gradient buckets while backward still runs; costs the bucket
        # buffers above, hides most of the communication behind compute.
        zero.update(overlap_comm=True)
    if d.zero_stage == 2:
        zero.update(allgather_bucket_size=BUCKET)  # gathers updated weight partitions after the step
    if d.offload_optimizer:
        if d.zero_stage < 1:
            raise ValueError("distributed.offload_optimizer needs distributed.zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if d.zero_stage == 3:
        # Gather whole weights on save so exports do not need zero_to_fp32 (ours rebuilds anyway).
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        # Prefetch the next layers' weights during compute (DiT blocks are uniform, ~30M params each at XL);
        # keep small tensors (norms, biases, adaLN) resident instead of gathering them every layer.
        zero.update(stage3_prefetch_bucket_size=BUCKET // 4, stage3_param_persistence_threshold=100_000)
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
    if d.precision == "bf16":
        # Accumulate gradients over micro-batches in fp32: summing many bf16 gradients (8 mantissa
        # bits) loses the small ones; the ZeRO gradient partitions are then kept in fp32.
        conf["data_types"] = {"grad_accum_dtype": "fp32"}
    return merge_overrides(conf, d.deepspeed_overrides or {})


def merge_overrides(conf: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge a user's DeepSpeed fragment; ValueError naming any owned, unknown or invalid key."""
    if not isinstance(overrides, dict):
        raise ValueError(f"distributed.deepspeed_overrides must be a mapping, got {overrides!r}")
    for key in _dotted(overrides):
        if any(key == k or key.startswith(k + ".") for k in OWNED_KEYS):
            raise ValueError(
                f"distributed.deepspeed_overrides.{key} is set from the typed config; change the dfm-video key instead"
            )
    unknown = sorted(k for k in overrides if k not in OVERRIDABLE)
    if unknown:
        raise ValueError(
            "distributed.deepspeed_overrides: unknown or unsupported "
            f"DeepSpeed key(s) {unknown} (allowed: {', '.join(OVERRIDABLE)})"
        )
    merged = _deep_merge(conf, overrides)
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # pydantic model; forbids unknown keys

    try:
        DeepSpeedZeroConfig(**merged["zero_optimization"])
    except Exception as exc:
        raise ValueError(f"distributed.deepspeed_overrides.zero_optimization is invalid: {exc}") from exc
    return merged


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.append(key)
        if isinstance(v, dict):
            out += _dotted(v, key)
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
