"""The DFM training loop under DeepSpeed: data -> DFM objective -> ZeRO step -> EMA -> logs/checkpoints.

Reproducibility: every random draw of a sample (stage, t, noise, label dropout) comes from a
generator seeded by (train.seed, global sample position), independent of world size and micro
batch; the data order is a function of (seed, epoch); checkpoints hold the model, optimizer,
scheduler, EMA and the number of samples consumed. So `--resume auto` after a crash reproduces the
uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from dfm_video.config import Config, config_to_dict
from dfm_video.data.mixture import latent_shapes, open_data
from dfm_video.models import build_model
from dfm_video.parallel.groups import data_parallel_layout
from dfm_video.parallel.setup import sequence_parallel_ds_config, setup_parallel, validate_parallel
from dfm_video.train.checkpoint import CheckpointManager
from dfm_video.train.checkpoint_trigger import CheckpointTrigger
from dfm_video.train.ds_config import build_deepspeed_config, gradient_accumulation_steps
from dfm_video.train.ema import EMA
from dfm_video.train.engine import TrainState, create_engine, init_distributed
from dfm_video.train.export import export_weights
from dfm_video.train.init_from import InitFrom, plan_init_from
from dfm_video.train.lr_schedule import lr_multiplier
from dfm_video.train.memory_setup import plan_checkpointing, with_policy
from dfm_video.train.monitor import RunMonitor, check_monitoring
from dfm_video.train.nonfinite import NonFiniteLossError, NonFiniteSteps
from dfm_video.train.param_groups import param_groups
from dfm_video.train.step import TrainStep

__all__ = ["NonFiniteLossError", "train"]
log = logging.getLogger(__name__)


def use_fused_adamw(setting: bool | str, device: torch.device) -> bool:
    """optim.fused: true / false, or `auto` = fused on CUDA (one kernel launch for every parameter)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def build_optimizer(cfg: Config, groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """torch AdamW over the decay / no-decay groups, fused or per-tensor (`optim.fused`); `device` is
    where the step runs (DeepSpeed moves the parameters there after this)."""
    fused = use_fused_adamw(cfg.optim.fused, device)
    return torch.optim.AdamW(
        groups,
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        fused=fused,  # not fused: torch's default implementation for the device (foreach on CUDA)
    )


def build_state(cfg: Config, ds_config: dict, device: torch.device, init: InitFrom | None = None) -> TrainState:
    """Model (identical initial weights on every rank; `init`: pretrained ones), sequence-parallel hooks,
    AdamW with decay / no-decay groups, the LR schedule, the DeepSpeed engine and the EMA."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.dfm)
    if init is not None:  # before DeepSpeed partitions the model; the EMA below starts from these weights
        init.apply(model, dist.get_rank())
    groups = setup_parallel(cfg, model)  # N > 1: hooks the model to process 1/N of the tokens
    optimizer = build_optimizer(cfg, param_groups(model, cfg.optim.weight_decay), device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.optim, cfg.train.steps))
    engine, scheduler = create_engine(model, optimizer, scheduler, ds_config, mpu=groups.mpu)
    return TrainState(engine, EMA(engine.module, cfg.train.ema_decay), optimizer, scheduler)


def train(
    cfg: Config,
    resume: str = "auto",
    config_source: str = "config",
    overwrite: bool = False,
    allow_change: Sequence[str] = (),
) -> Path:
    """Run training to cfg.train.steps; returns the export directory."""
    # Config, data and the resume plan are checked before any process group: clean errors first.
    data = open_data(cfg, config_source)  # validates shards vs config
    for shape in latent_shapes(data):  # sequence parallel N vs heads, world, tokens of every dataset
        sp = validate_parallel(cfg, shape)
    check_monitoring(cfg, config_source)
    memory = plan_checkpointing(cfg, latent_shapes(data), int(os.environ.get("WORLD_SIZE", "1")))
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("memory plan: %s", memory.describe())
    out_dir = Path(cfg.train.output_dir)
    ckpt = CheckpointManager(
        out_dir,
        config_to_dict(cfg),
        data.dataset_meta(),
        len(data.dataset),
        keep_last=cfg.train.keep_last,
        lr=cfg.optim.lr,
    )
    ckpt.plan(resume, int(os.environ.get("WORLD_SIZE", "1")), cfg.distributed.zero_stage, overwrite, allow_change)
    ckpt.convert(int(os.environ.get("RANK", "0")))  # another world size: before any collective can time out
    init = plan_init_from(cfg, ckpt.start.checkpoint)  # pretrained weights read and checked, None on resume

    # Process group, model and engine. Data parallelism runs across sequence-parallel groups:
    # batches, seeds and batch arithmetic use the group index (dp_rank) and count (dp_size).
    info = init_distributed(cfg.distributed.backend)
    rank, world, device = info.rank, info.world_size, info.device
    dp_rank, dp_size = data_parallel_layout(rank, world, sp)
    ckpt.open_run_dir(rank, world)
    ds_config = ckpt.deepspeed_config(sequence_parallel_ds_config(build_deepspeed_config(cfg, dp_size), sp))
    state = build_state(with_policy(cfg, memory.policy), ds_config, device, init)
    step, consumed = ckpt.restore(state)

    order = data.sampler(rank=dp_rank, world_size=dp_size, start=consumed, resume=ckpt.data_resume())
    batches = data.batches(order=order, device=device)
    monitor = RunMonitor(cfg, rank, world, device, out_dir, data.dataset_meta(), data.latent_shape, step)
    train_step = TrainStep(
        cfg,
        state.engine,
        batches,
        monitor.metrics,
        accum=gradient_accumulation_steps(cfg, dp_size),
        dp_rank=dp_rank,
        dp_size=dp_size,
        sp=sp,
        device=device,
    )
    nonfinite = NonFiniteSteps(cfg.train.max_nonfinite, rank)
    trigger = CheckpointTrigger(cfg.train.ckpt_every, cfg.train.ckpt_every_minutes, device)
    train_step.stop_requested = trigger.stop_requested

    state.engine.train()
    saved_step = step
    while step < cfg.train.steps:
        step += 1
        consumed, loss_bad = train_step(step, consumed)
        if train_step.interrupted:  # SIGTERM inside the step: it is abandoned, step - 1 is what gets saved
            step -= 1
            save, stop = step != saved_step, True
        else:
            if not nonfinite.after_step(step, state.engine, loss_bad):
                monitor.metrics.timers["ema"].start()
                state.ema.update()
                monitor.metrics.timers["ema"].stop()
            monitor.after_step(step, state, nonfinite.total)
            save, stop = trigger.due(step, cfg.train.steps)
        if save:
            t0 = time.monotonic()
            ckpt.save(state, step, consumed, nonfinite.total, order.position(consumed))
            trigger.saved()
            saved_step, save_s = step, time.monotonic() - t0
            if rank == 0 and stop:
                log.info("SIGTERM: saved checkpoint at step %d in %.1f s", step, save_s)
        if stop:
            if rank == 0:
                log.info("SIGTERM: stopping; step %d is saved (resume with --resume auto)", step)
            monitor.close(plot=False)
            trigger.close()
            dist.barrier()
            return out_dir / "export"
    trigger.close()
    monitor.close()

    weights = state.ema.full_state_dict()  # collective under ZeRO-3
    export_dir = out_dir / "export"
    if rank == 0:
        export_weights(weights, cfg, data.dataset_meta(), export_dir, step)
        log.info("exported EMA weights to %s", export_dir)
    dist.barrier()
    return export_dir
