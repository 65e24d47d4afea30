"""The DFM training loop under DeepSpeed: data -> DFM objective -> ZeRO step -> EMA -> logs/checkpoints.

Reproducibility: every random draw of a micro-batch (stage, t, noise, label dropout) comes from a
generator seeded by (train.seed, global micro-batch index, rank); the data order is a function of
(seed, epoch); checkpoints hold the model, optimizer, scheduler, EMA and the number of samples
consumed. So `--resume auto` after a crash reproduces the uninterrupted run's losses bit for bit.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from dfm_video.config import Config, config_to_dict, save_config
from dfm_video.data.loader import open_training_data
from dfm_video.dfm import TimestepParams, dfm_objective
from dfm_video.models import build_model
from dfm_video.models.flops import training_flops
from dfm_video.models.patch import stage_patch_sizes, token_grid
from dfm_video.train.checkpoint import latest_tag, load_checkpoint, save_checkpoint
from dfm_video.train.ds_config import build_deepspeed_config, gradient_accumulation_steps
from dfm_video.train.ema import EMA
from dfm_video.train.engine import create_engine, init_distributed
from dfm_video.train.extras import RunExtras, check_extras
from dfm_video.train.export import export_weights
from dfm_video.train.lr_schedule import lr_multiplier
from dfm_video.train.metrics import MetricAccumulator, MetricWriter
from dfm_video.train.param_groups import param_groups


class NonFiniteLossError(RuntimeError):
    """Raised after train.max_nonfinite consecutive non-finite losses."""


def _micro_generator(seed: int, micro_index: int, rank: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + micro_index) * 4099 + rank)
    return g


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _all_finite(loss: torch.Tensor) -> bool:
    """One scalar sync per micro-step: every rank must agree to skip, or ZeRO's collectives hang."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).view(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def train(
    cfg: Config, resume: str = "auto", config_source: str = "config", fail_at_step: Optional[int] = None, fail_times: int = 1
) -> Path:
    """Run training to cfg.train.steps; returns the export directory. `fail_at_step` / `fail_times`
    are a test hook: the first `fail_times` losses computed for that step are made NaN."""
    data = open_training_data(cfg, config_source)  # validates shards vs config before any process group
    check_extras(cfg, config_source)
    info = init_distributed(cfg.distributed.backend)
    rank, world, device = info.rank, info.world_size, info.device
    out_dir = Path(cfg.train.output_dir)
    ckpt_root = out_dir / "checkpoints"
    accum = gradient_accumulation_steps(cfg, world)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, cfg.dfm)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg.optim, cfg.train.steps))
    engine, scheduler = create_engine(model, optimizer, scheduler, build_deepspeed_config(cfg, world))
    ema = EMA(engine.module, cfg.train.ema_decay)
    model_dtype = torch.bfloat16 if cfg.distributed.precision == "bf16" else torch.float32

    step, consumed = 0, 0
    tag = None
    if resume == "auto":
        tag = latest_tag(ckpt_root)
    elif resume not in ("none", ""):
        tag = Path(resume).name
        ckpt_root = Path(resume).parent
    if tag is not None:
        client, ema_state = load_checkpoint(engine, ckpt_root, tag, rank)
        ema.load_state_dict(ema_state)
        step, consumed = int(client["step"]), int(client["samples_consumed"])
        if rank == 0:
            print(f"resumed from {ckpt_root / tag} at step {step}", flush=True)
    ckpt_root = out_dir / "checkpoints"

    batches = data.batches(rank=rank, world_size=world, start=consumed, device=device)
    params = TimestepParams.from_config(cfg.dfm)
    metrics = MetricAccumulator(cfg.dfm.num_stages, device)
    writer = MetricWriter(str(out_dir / "tensorboard") if cfg.train.tensorboard else None, rank, str(out_dir / "metrics.jsonl"))
    flops_per_sample = training_flops(cfg.model, cfg.dfm, data.latent_shape)
    tokens_per_sample = math.prod(
        token_grid(data.latent_shape, stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)[-1], cfg.dfm.temporal_mode)
    )
    micro_per_step = world * cfg.distributed.micro_batch_size
    extras = RunExtras(cfg, rank, out_dir, data.dataset_meta(), device, writer.tb, step)

    def velocity(x, t, active, y):
        return engine([v.to(model_dtype) for v in x], t, active, y)

    nonfinite_run = nonfinite_total = 0
    engine.train()
    while step < cfg.train.steps:
        done = 0
        while done < accum:
            t0 = time.perf_counter()
            levels, labels = next(batches)
            wait = time.perf_counter() - t0
            micro_index = consumed // micro_per_step
            consumed += micro_per_step
            gen = _micro_generator(cfg.train.seed, micro_index, rank, device)
            out = dfm_objective(
                velocity, levels, labels, params, class_dropout=cfg.model.class_dropout, null_class=engine.module.null_class, generator=gen
            )
            loss = out.loss
            if fail_at_step is not None and step + 1 == fail_at_step and fail_times > 0:
                fail_times -= 1
                loss = loss * float("nan")
            if not _all_finite(loss):
                nonfinite_run += 1
                nonfinite_total += 1
                if rank == 0:
                    print(f"warning: non-finite loss at step {step + 1} (skipped; {nonfinite_total} so far)", file=sys.stderr, flush=True)
                if nonfinite_run >= cfg.train.max_nonfinite:
                    raise NonFiniteLossError(
                        f"stopping at step {step + 1}: {nonfinite_run} consecutive non-finite losses "
                        f"(train.max_nonfinite={cfg.train.max_nonfinite})"
                    )
                continue
            nonfinite_run = 0
            engine.backward(loss)
            engine.step()
            metrics.add(loss, out.per_stage, out.active_count, cfg.distributed.micro_batch_size, wait)
            done += 1
        step += 1
        ema.update()
        extras.after_step(step, ema)  # progress bar; EMA samples every train.sample_every (collective)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            m = metrics.reduce()
            grad_norm = engine.get_global_grad_norm()
            m["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
            m["lr"] = scheduler.get_last_lr()[0]
            m["perf/tokens_per_s"] = m["perf/samples_per_s"] * tokens_per_sample
            m["perf/mfu(%)"] = 100.0 * m["perf/samples_per_s"] * flops_per_sample / (world * cfg.train.peak_tflops * 1e12)
            m["mem/peak_gib"] = _peak_memory_gib(device)
            m["train/nonfinite_skipped"] = float(nonfinite_total)
            writer.write(step, m)
            extras.after_log(step, m)
            metrics.reset()
        if step % cfg.train.ckpt_every == 0 or step == cfg.train.steps:
            client = {"step": step, "samples_consumed": consumed, "config": config_to_dict(cfg), "dataset_meta": data.dataset_meta()}
            save_checkpoint(engine, ckpt_root, step, client, ema.state_dict(), cfg.train.keep_last, rank)
    writer.close()
    extras.close()  # loss.png in the run directory
    weights = ema.full_state_dict()  # collective under ZeRO-3
    export_dir = out_dir / "export"
    if rank == 0:
        export_weights(weights, cfg, data.dataset_meta(), export_dir, step)
        print(f"exported EMA weights to {export_dir}", flush=True)
    dist.barrier()
    return export_dir
