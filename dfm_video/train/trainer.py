"""The DFM training loop under DeepSpeed: data -> DFM objective -> ZeRO step -> EMA -> logs/checkpoints.

Reproducibility: every random draw of a sample (stage, t, noise, label dropout) comes from a
generator seeded by (train.seed, global sample position), independent of world size and micro
batch; the data order is a function of
(seed, epoch); checkpoints hold the model, optimizer, scheduler, EMA and the number of samples
consumed. So `--resume auto` after a crash reproduces the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from dfm_video.config import Config, config_to_dict
from dfm_video.data.mixture import latent_shapes, open_data
from dfm_video.dfm import TimestepParams, dfm_objective
from dfm_video.dfm.objective import sample_generators
from dfm_video.models import build_model
from dfm_video.models.flops import training_flops
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.parallel.groups import data_parallel_layout
from dfm_video.parallel.setup import sequence_parallel_ds_config, setup_parallel, validate_parallel
from dfm_video.train import state_dump
from dfm_video.train.checkpoint import save_checkpoint
from dfm_video.train.ds_config import build_deepspeed_config, gradient_accumulation_steps
from dfm_video.train.ema import EMA
from dfm_video.train.engine import create_engine, init_distributed
from dfm_video.train.export import export_weights
from dfm_video.train.extras import RunExtras, check_extras
from dfm_video.train.lr_schedule import lr_multiplier
from dfm_video.train.metrics import MetricAccumulator, MetricWriter
from dfm_video.train.param_groups import param_groups
from dfm_video.train.resume import check_shared_run_dir, plan_start, restore
from dfm_video.train.resume_guard import clear_run, data_fingerprint, record_config
from dfm_video.train.step_guard import CheckpointTrigger, FaultInjection, NonFiniteLossError, NonFiniteSteps, all_finite

__all__ = ["NonFiniteLossError", "train"]


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train(
    cfg: Config,
    resume: str = "auto",
    config_source: str = "config",
    fail_at_step: Optional[int] = None,
    fail_times: int = 1,
    overwrite: bool = False,
    allow_change: Sequence[str] = (),
    fail_grad_at_step: Optional[int] = None,
) -> Path:
    """Run training to cfg.train.steps; returns the export directory. `fail_at_step` / `fail_times`
    (NaN losses on that many steps from it) and `fail_grad_at_step` (infinite gradients, finite
    loss) are test hooks."""
    data = open_data(cfg, config_source)  # validates shards vs config before any process group
    for shape in latent_shapes(data):  # sequence parallel N vs heads, world, tokens of every dataset
        sp = validate_parallel(cfg, shape)
    check_extras(cfg, config_source)
    out_dir = Path(cfg.train.output_dir)
    ckpt_root = out_dir / "checkpoints"
    cfg_dict = config_to_dict(cfg)
    fingerprint = data_fingerprint(data.dataset_meta(), len(data.dataset))
    # Resume decisions and config comparison also come before any process group (clean errors).
    plan = plan_start(
        cfg_dict,
        fingerprint,
        resume,
        out_dir,
        int(os.environ.get("WORLD_SIZE", "1")),
        cfg.distributed.zero_stage,
        overwrite=overwrite,
        allow_change=allow_change,
    )
    info = init_distributed(cfg.distributed.backend)
    rank, world, device = info.rank, info.world_size, info.device
    # Data parallelism runs across sequence-parallel groups: batches, seeds and batch arithmetic
    # use the group index (dp_rank) and count (dp_size); with N = 1 they are rank and world.
    dp_rank, dp_size = data_parallel_layout(rank, world, sp)
    accum = gradient_accumulation_steps(cfg, dp_size)
    if rank == 0 and plan.clear_first:
        print(f"--overwrite: removed {', '.join(clear_run(out_dir))} from {out_dir}", flush=True)
    check_shared_run_dir(out_dir, rank)
    if rank == 0:
        record_config(out_dir, cfg_dict, plan.step, plan.changes)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, cfg.dfm)
    groups = setup_parallel(cfg, model)  # N > 1: hooks the model to process 1/N of the tokens
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.optim, cfg.train.steps))
    ds_config = sequence_parallel_ds_config(build_deepspeed_config(cfg, dp_size), sp)
    if plan.universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    engine, scheduler = create_engine(model, optimizer, scheduler, ds_config, mpu=groups.mpu)
    ema = EMA(engine.module, cfg.train.ema_decay)
    model_dtype = torch.bfloat16 if cfg.distributed.precision == "bf16" else torch.float32

    dump_dir = os.environ.get("DFM_TEST_DUMP_STATE")  # test hook: whole state after each save / resume

    def dump_state(kind: str) -> None:
        if dump_dir:
            state_dump.dump(engine, ema, scheduler, Path(dump_dir) / f"{kind}_{step:08d}.safetensors", rank)

    step, consumed = 0, 0
    if plan.checkpoint is not None:
        step, consumed = restore(plan, engine, ema, optimizer, scheduler, ckpt_root, cfg.optim.lr, rank)
        dump_state("resumed")

    batches = data.batches(rank=dp_rank, world_size=dp_size, start=consumed, device=device)
    params = TimestepParams.from_config(cfg.dfm)
    metrics = MetricAccumulator(cfg.dfm.num_stages, device)
    writer = MetricWriter(
        str(out_dir / "tensorboard") if cfg.train.tensorboard else None, rank, str(out_dir / "metrics.jsonl")
    )
    flops_per_sample = training_flops(cfg.model, cfg.dfm, data.latent_shape)
    tokens_per_sample = math.prod(
        token_grid(
            data.latent_shape, stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1], cfg.dfm.temporal_mode
        )
    )
    micro_per_step = dp_size * cfg.distributed.micro_batch_size
    faults = FaultInjection(fail_at_step, fail_times, fail_grad_at_step)
    nonfinite = NonFiniteSteps(cfg.train.max_nonfinite, rank)
    trigger = CheckpointTrigger(cfg.train.ckpt_every, cfg.train.ckpt_every_minutes, device)
    extras = RunExtras(cfg, rank, out_dir, data.dataset_meta(), device, writer.tb, step)

    def velocity(x, t, active, y):
        return faults.outputs(step + 1, engine([v.to(model_dtype) for v in x], t, active, y))

    def checkpoint_meta() -> dict:
        return {
            "step": step,
            "samples_consumed": consumed,
            "world_size": world,
            "zero_stage": cfg.distributed.zero_stage,
            "precision": cfg.distributed.precision,
            "config": cfg_dict,
            "dataset_meta": data.dataset_meta(),
            "data_fingerprint": fingerprint,
            "lr": scheduler.get_last_lr()[0],
            "nonfinite_skipped": nonfinite.total,
        }

    engine.train()
    while step < cfg.train.steps:
        loss_bad = False
        for _ in range(accum):
            t0 = time.perf_counter()
            levels, labels = next(batches)
            wait = time.perf_counter() - t0
            # Per-sample random streams keyed by the global sample position: the same draws whatever
            # the world size and micro batch, so a resume on another world size continues the same run.
            gens = sample_generators(
                cfg.train.seed, consumed + dp_rank * cfg.distributed.micro_batch_size, labels.shape[0], device
            )
            consumed += micro_per_step
            out = dfm_objective(
                velocity,
                levels,
                labels,
                params,
                class_dropout=cfg.model.class_dropout,
                null_class=engine.module.null_class,
                generator=gens,
            )
            loss = faults.loss(step + 1, out.loss)
            finite = all_finite(loss)
            loss_bad |= not finite
            engine.backward(loss)  # a NaN loss gives NaN gradients: DeepSpeed then skips the whole step
            engine.step()
            if finite:  # samples counted once per sequence-parallel group
                metrics.add(loss, out.per_stage, out.active_count, cfg.distributed.micro_batch_size / sp, wait)
        step += 1
        if not nonfinite.after_step(step, engine, loss_bad):
            ema.update()
        extras.after_step(step, ema)  # progress bar; EMA samples every train.sample_every (collective)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            m = metrics.reduce()
            grad_norm = engine.get_global_grad_norm()
            m["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
            m["lr"] = scheduler.get_last_lr()[0]
            m["perf/tokens_per_s"] = m["perf/samples_per_s"] * tokens_per_sample
            achieved = m["perf/samples_per_s"] * flops_per_sample / world
            m["perf/mfu(%)"] = 100.0 * achieved / (cfg.train.peak_tflops * 1e12)
            m["perf/mfu_vs_measured_peak(%)"] = 100.0 * achieved / (cfg.train.measured_peak_tflops * 1e12)
            m["mem/peak_gib"] = _peak_memory_gib(device)
            m["train/nonfinite_skipped"] = float(nonfinite.total)
            writer.write(step, m)
            extras.after_log(step, m)
            metrics.reset()
        save, stop = trigger.due(step, cfg.train.steps)
        if save:
            save_checkpoint(engine, ckpt_root, step, checkpoint_meta(), ema, cfg.train.keep_last, rank)
            trigger.saved()
            dump_state("saved")
        if stop:
            if rank == 0:
                print(f"SIGTERM: saved checkpoint at step {step}; stopping (resume with --resume auto)", flush=True)
            writer.close()
            trigger.close()
            dist.barrier()
            return out_dir / "export"
    trigger.close()
    writer.close()
    extras.close()  # loss.png in the run directory
    weights = ema.full_state_dict()  # collective under ZeRO-3
    export_dir = out_dir / "export"
    if rank == 0:
        export_weights(weights, cfg, data.dataset_meta(), export_dir, step)
        print(f"exported EMA weights to {export_dir}", flush=True)
    dist.barrier()
    return export_dir
