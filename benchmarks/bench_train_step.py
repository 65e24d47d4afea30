"""The shipped k700 training step, measured the way `deepspeed dfm_video/train.py` runs it.

    python -m benchmarks.bench_train_step [--quick] [--zero-stages 1,2,3] [--budget-s S]

One process, no launcher (it sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself), and
the trainer's own pieces end to end: shards written by the real writer (`dfm_video.data.store`:
`DatasetStore`, `write_clips`, `finalize`; random latents at the config's level shapes), read by
`open_data` through its DataLoader, the memory planner (`plan_checkpointing`), `build_state`
(model, AdamW from `optim.fused`, LR schedule, DeepSpeed engine from `build_deepspeed_config`,
EMA), `TrainStep` (per-sample generators, DFM objective, ZeRO step) and the EMA update.

GPU: configs/k700.yaml (DiT3D-XL, 13 x 32 x 32 = 13,312 tokens, micro batch 2) with 2 accumulation
steps on one GPU (global batch 4). Rows:
    old         activation_checkpointing full, AdamW per-tensor loop (the settings k700 shipped with)
    new         the shipped config: activation_checkpointing auto (the planner's pick for this GPU), fused AdamW
    new ZeRO-k  the new row under ZeRO stage k (--zero-stages; one GPU: no communication, so this
                measures each stage's own bookkeeping)
Each row: 2 warm-up + 4 timed optimizer steps -> ms/step, samples/s, TFLOP/s (analytic useful
FLOPs, 3x forward), MFU against the 989 TFLOP/s datasheet peak and the measured matmul peak (786
H200 / 752 H100), peak memory, optimizer and EMA ms per step (the trainer's own timers), data wait.
Then one optimizer step of `old` and `new` under torch.profiler: kernel time per category
(attention, matmuls, elementwise, optimizer + EMA, communication) plus the data wait.
Expected GPU time (H100/H200): ~25-35 s per row (XL init on the host ~10 s, engine ~5 s, 6 steps of
~1 s), ~180 s with --zero-stages 1,3; rows that would end past --budget-s (default
$GPU_CHECK_SECTION_BUDGET_S or 300) are skipped and say so.
CPU (--quick, or no GPU): configs/tiny.yaml, 1 warm-up + 2 timed steps, fp32 over gloo: a smoke test
of all of it (CPU timings mean nothing). Exit status 1 when a row fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dfm_video` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_model import level_shapes_for_grid, peak_tflops  # noqa: E402
from benchmarks.common import env_line, print_table  # noqa: E402
from dfm_video.config import Config, load_config  # noqa: E402
from dfm_video.data import schema as S  # noqa: E402
from dfm_video.data.mixture import latent_shapes, open_data  # noqa: E402
from dfm_video.data.store import DatasetStore, ShardLayout, write_clips  # noqa: E402
from dfm_video.models import stage_patch_sizes, training_flops  # noqa: E402
from dfm_video.train.ds_config import build_deepspeed_config, gradient_accumulation_steps  # noqa: E402
from dfm_video.train.engine import init_distributed  # noqa: E402
from dfm_video.train.memory_setup import plan_checkpointing, with_policy  # noqa: E402
from dfm_video.train.metrics import MetricAccumulator  # noqa: E402
from dfm_video.train.step import TrainStep  # noqa: E402
from dfm_video.train.trainer import build_state  # noqa: E402

DATASHEET_PEAK = 989.0  # H100 / H200 SXM dense bf16, TFLOP/s
CATEGORIES = ("attention", "matmuls", "elementwise", "optimizer+EMA", "communication")


def _single_process_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        os.environ.setdefault(k, v)


def write_shards(cfg: Config, grid: Sequence[int], root: Path, count: int) -> list[tuple[int, int, int]]:
    """`count` clips of random latents at the config's level shapes, through the real shard writer."""
    patches = stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors)
    shapes = level_shapes_for_grid(grid, patches, cfg.dfm.temporal_mode)
    C = cfg.model.in_channels
    layout = ShardLayout(
        [list(f) for f in cfg.dfm.factors],
        cfg.dfm.temporal_mode,
        [[C, *s] for s in shapes],
        {"id": "bench-random-latents", "latent_channels": C},
        "bfloat16",
    )
    g = torch.Generator().manual_seed(0)
    labels = [f"class{i}" for i in range(cfg.model.num_classes)]
    samples = [
        S.Sample(
            f"clip{i:05d}", labels[i % len(labels)], i % len(labels), "train", f"/bench/{i}.mp4", 8.0, 25.0, [0],
            [torch.randn(C, *s, generator=g) for s in shapes],
        )
        for i in range(count)
    ]  # fmt: skip
    store = DatasetStore(root)
    try:
        store.write_run_files(cfg, labels, [])
        for i in range(0, count, 8):  # one shard per writer batch, as the pipeline's writer does
            write_clips(root, samples[i : i + 8], [], layout)
        store.finalize(
            {"run_id": "bench"}, layout.level_shapes, layout.factors, layout.temporal_mode, layout.autoencoder
        )
    finally:
        store.close()
    return shapes


def category(name: str) -> str:
    """Kernel or aten op name -> one of CATEGORIES."""
    n = name.lower()
    if any(k in n for k in ("nccl", "gloo", "all_reduce", "allreduce", "reduce_scatter", "all_gather", "c10d")):
        return "communication"
    if any(k in n for k in ("attention", "flash", "fmha", "sdpa", "cudnn_mha")):
        return "attention"
    if any(k in n for k in ("adam", "lerp", "_foreach", "multi_tensor")):  # AdamW (fused or foreach), EMA
        return "optimizer+EMA"
    if any(k in n for k in ("gemm", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")):
        return "matmuls"
    return "elementwise"


def profile_categories(prof: Any, on_gpu: bool) -> dict[str, float]:
    """Milliseconds per category: device kernels' own time on GPU, aten ops' self CPU time on CPU."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for e in prof.key_averages():
        if on_gpu:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.self_device_time_total
        else:
            if not (e.key.startswith("aten::") or "gloo" in e.key or "c10d" in e.key):
                continue
            us = e.self_cpu_time_total
        out[category(e.key)] += us / 1000.0
    return out


class Row:
    """One engine and data stream, built the way the trainer builds them."""

    def __init__(self, cfg: Config, device: torch.device, world: int = 1) -> None:
        self.cfg, self.device = cfg, device
        data = open_data(cfg, "bench")
        self.plan = plan_checkpointing(cfg, latent_shapes(data), world)
        run_cfg = with_policy(cfg, self.plan.policy)
        self.state = build_state(run_cfg, build_deepspeed_config(run_cfg, world), device)
        self.metrics = MetricAccumulator(cfg.dfm.num_stages, device)
        batches = data.batches(rank=0, world_size=world, start=0, device=device)
        self.accum = gradient_accumulation_steps(cfg, world)
        self.step_fn = TrainStep(
            run_cfg, self.state.engine, batches, self.metrics, accum=self.accum, dp_rank=0, dp_size=world, sp=1,
            device=device,
        )  # fmt: skip
        self.consumed = 0
        self.state.engine.train()

    def step(self, n: int) -> None:
        """Optimizer step n as the trainer's loop runs it (TrainStep, then the timed EMA update)."""
        self.consumed, bad = self.step_fn(n, self.consumed)
        if bad:
            raise RuntimeError(f"step {n}: non-finite loss")
        self.metrics.timers["ema"].start()
        self.state.ema.update()
        self.metrics.timers["ema"].stop()

    def close(self) -> None:
        del self.state, self.step_fn
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variants(cfg: Config, stages: Sequence[int]) -> list[tuple[str, Config]]:
    def with_(c: Config, model: dict, optim: dict, dist: dict) -> Config:
        return dataclasses.replace(
            c,
            model=dataclasses.replace(c.model, **model),
            optim=dataclasses.replace(c.optim, **optim),
            distributed=dataclasses.replace(c.distributed, **dist),
        )

    rows = [
        ("old", with_(cfg, {"activation_checkpointing": "full"}, {"fused": False}, {})),
        ("new", cfg),
    ]
    rows += [
        (f"new ZeRO-{z}", with_(cfg, {}, {}, {"zero_stage": z})) for z in stages if z != cfg.distributed.zero_stage
    ]
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized smoke test (forced without a GPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--accum", type=int, default=2, help="gradient accumulation steps on the one GPU")
    p.add_argument("--zero-stages", default="1,3", help="extra ZeRO stages for the `new` settings ('' for none)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="measured matmul peak (second MFU column)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    on_gpu = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    budget = args.budget_s or float(os.environ.get("GPU_CHECK_SECTION_BUDGET_S", "300"))
    _single_process_env()
    if on_gpu:
        cfg = load_config("k700.yaml")
        grid = (13, 32, 32)
        row_estimate_s = 35.0
    else:
        cfg = load_config("tiny.yaml", ["model.activation_checkpointing=auto", "data.num_workers=0"])
        grid = (3, 4, 4)
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
        row_estimate_s = 10.0
    micro = cfg.distributed.micro_batch_size
    stages = [int(z) for z in args.zero_stages.split(",") if z.strip()]
    per_step = micro * args.accum
    tmp = tempfile.TemporaryDirectory(prefix="bench_train_step_")
    root = Path(tmp.name)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, shards=str(root / "shards"), mix=[]),
        distributed=dataclasses.replace(cfg.distributed, global_batch_size=per_step, backend="auto"),
        train=dataclasses.replace(cfg.train, output_dir=str(root / "out")),
    )
    shapes = write_shards(cfg, grid, root / "shards", per_step * (args.warmup + args.steps + 2))
    latent = shapes[-1]
    init_distributed(cfg.distributed.backend)
    flops_per_step = training_flops(cfg.model, cfg.dfm, latent) * per_step
    measured = peak_tflops(device, args.peak_tflops)
    print(f"# training step benchmark: {env_line(device)}")
    print(
        f"{cfg.name}: {cfg.model.name} latent {(cfg.model.in_channels, *latent)}, "
        f"{grid[0] * grid[1] * grid[2]} tokens, "
        f"micro {micro} x accumulation {args.accum}, {cfg.distributed.precision}, ZeRO-{cfg.distributed.zero_stage}; "
        f"{args.warmup} warm-up + {args.steps} timed optimizer steps; shards written by the real writer to {root}",
        flush=True,
    )

    header = [
        "row", "checkpointing", "AdamW", "ms/step", "samples/s", "TFLOP/s", "MFU % (989)", "MFU % (measured)",
        "peak GiB", "optimizer ms", "EMA ms", "data wait ms", "x old",
    ]  # fmt: skip
    table, profiles, status, old_ms = [], {}, 0, None
    for name, vcfg in variants(cfg, stages):
        elapsed = time.perf_counter() - start
        if elapsed + row_estimate_s > budget:
            print(
                f"{name}: skipped ({elapsed:.0f} s elapsed + ~{row_estimate_s:.0f} s "
                f"would pass the {budget:.0f} s budget)"
            )
            continue
        try:
            row = Row(vcfg, device)
            print(f"{name}: {row.plan.describe()}", flush=True)
            n = 0
            for _ in range(args.warmup):
                n += 1
                row.step(n)
            _sync(device)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            row.metrics.reset()
            for t in row.metrics.timers.values():
                t.mean_ms()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                n += 1
                row.step(n)
            _sync(device)
            ms = (time.perf_counter() - t0) * 1000 / args.steps
            opt_ms, ema_ms = row.metrics.timers["optimizer"].mean_ms(), row.metrics.timers["ema"].mean_ms()
            wait_ms = 1000 * row.metrics.data_wait / args.steps
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else float("nan")
            if name in ("old", "new") and not args.no_profile:
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
                row.metrics.reset()
                with profile(activities=acts) as prof:
                    n += 1
                    row.step(n)
                    _sync(device)
                cats = profile_categories(prof, on_gpu)
                cats["data wait"] = 1000 * row.metrics.data_wait
                profiles[name] = cats
            fused = bool(row.state.optimizer.defaults.get("fused"))
            policy = row.plan.policy
            row.close()
        except Exception as e:  # noqa: BLE001 - report the row and go on
            status = 1
            table.append([name, "error", f"{type(e).__name__}: {str(e)[:160]}"] + ["-"] * (len(header) - 3))
            print("measured:", "  ".join(map(str, table[-1])), flush=True)
            continue
        tflops = flops_per_step / (ms / 1000) / 1e12
        old_ms = ms if name == "old" else old_ms
        table.append(
            [
                name, policy, "fused" if fused else "foreach", f"{ms:.1f}", f"{per_step / (ms / 1000):.2f}",
                f"{tflops:.4g}", f"{100 * tflops / DATASHEET_PEAK:.3g}",
                f"{100 * tflops / measured:.1f}" if measured else "-", f"{mem:.1f}", f"{opt_ms:.1f}",
                f"{ema_ms:.1f}", f"{wait_ms:.1f}", f"{old_ms / ms:.2f}x" if old_ms else "-",
            ]
        )  # fmt: skip
        print("measured:", "  ".join(map(str, table[-1])), flush=True)
    print_table(f"{cfg.name} training step: old vs new settings (one {device.type.upper()})", header, table)
    if profiles:
        names = list(profiles)
        rows = []
        for cat in (*CATEGORIES, "data wait"):
            cells = [cat]
            for nm in names:
                total = sum(profiles[nm].values()) or 1.0
                cells.append(f"{profiles[nm][cat]:.1f} ({100 * profiles[nm][cat] / total:.0f}%)")
            rows.append(cells)
        print_table(
            "profile of one optimizer step, ms (share): "
            + ("GPU kernel time" if on_gpu else "CPU self time of aten ops"),
            ["category", *names],
            rows,
        )
    tmp.cleanup()
    print(f"# bench_train_step done in {time.perf_counter() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
