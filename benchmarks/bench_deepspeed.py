"""DeepSpeed section of the GPU check: the real ZeRO-2 engine, old vs new DeepSpeed settings, and a
checkpoint round trip on the device.

    python -m benchmarks.bench_deepspeed [--quick] [--budget-s S]
    python benchmarks/bench_deepspeed.py --quick          (CPU smoke test, < 1 min)

One process, no launcher: it sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT itself.
GPU: DiT3D-XL at the k700 shape (configs/k700.yaml: latent 16 x 13 x 64 x 64, patch (1, 2, 2),
2-stage DFM, 13 x 32 x 32 = 13,312 tokens), ZeRO-2, bf16, micro batch 1 x 2 accumulation steps,
the trainer's own pieces (build_deepspeed_config, dfm_objective with per-sample generators, EMA,
save_checkpoint). Rows:
    old   DeepSpeed's defaults for our batch sizes (bf16 gradient accumulation, overlap_comm off, default buckets)
    new   build_deepspeed_config (fp32 gradient accumulation, overlap_comm, 2e8-element buckets)
each 3 warm-up + 5 timed optimizer steps: ms/step, TFLOP/s (analytic training_flops), MFU against
the datasheet dense bf16 peak (989 TFLOP/s H100/H200) and against the measured matmul peak (752
H100 / 786 H200), peak memory. Then the round trip on the `new` engine: save a checkpoint, take one
step, load the checkpoint, check fp32 weights, Adam moments, EMA and LR equal the saved ones
exactly, take the same step again and compare the losses; checkpoint size per file kind.
Expected GPU time (H100/H200): ~100 s (2 x initialize ~10 s, 2 x 16 micro-steps ~15 s, save +
load of a ~12 GB checkpoint ~40-60 s); the round trip is skipped, and says so, when it would end
past --budget-s (default $GPU_CHECK_SECTION_BUDGET_S or 140).
CPU (--quick, or no GPU): the tiny config in bf16 over gloo: a smoke test that all of it works.
Exit status 1 when a row or the round-trip check fails.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dfm_video` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_model import level_shapes_for_grid, peak_tflops  # noqa: E402
from benchmarks.common import env_line, print_table  # noqa: E402

DATASHEET_PEAK = 989.0  # H100 / H200 SXM dense bf16, TFLOP/s


def _single_process_env(on_gpu: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        os.environ.setdefault(k, v)
    if not on_gpu:
        os.environ["DS_ACCELERATOR"] = "cpu"


def old_deepspeed_config(new: dict[str, Any]) -> dict[str, Any]:
    """The JSON with DeepSpeed's defaults (same batch sizes and precision): the baseline `new` is measured against."""
    old = {k: v for k, v in new.items() if k != "data_types"}
    old["zero_optimization"] = {
        "stage": new["zero_optimization"]["stage"],
        "overlap_comm": False,
        "contiguous_gradients": True,
    }
    return old


class Variant:
    """One engine: model + client AdamW + LambdaLR + EMA, fed by the trainer's DFM objective."""

    def __init__(self, cfg: Any, ds_conf: dict, device: torch.device, grid: Sequence[int]) -> None:
        from dfm_video.dfm import TimestepParams
        from dfm_video.models import build_model
        from dfm_video.train.ema import EMA
        from dfm_video.train.engine import create_engine
        from dfm_video.train.lr_schedule import lr_multiplier

        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.train.seed)
        with torch.device(device):  # initialise on the device: DiT3D-XL's init takes seconds on a CPU
            model = build_model(cfg.model, cfg.dfm)
        opt = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg.optim, cfg.train.steps))
        self.engine, self.scheduler = create_engine(model, opt, sched, ds_conf)
        self.ema = EMA(self.engine.module, cfg.train.ema_decay)
        self.params = TimestepParams.from_config(cfg.dfm)
        self.accum = ds_conf["gradient_accumulation_steps"]
        self.micro = ds_conf["train_micro_batch_size_per_gpu"]
        self.dtype = torch.bfloat16 if cfg.distributed.precision == "bf16" else torch.float32
        shapes = level_shapes_for_grid(grid, model.patches, cfg.dfm.temporal_mode)
        g = torch.Generator(device=device).manual_seed(1)
        C = cfg.model.in_channels
        # one fixed batch of standardised levels per micro-step slot (data loading is not measured here)
        self.levels = [
            [torch.randn(self.micro, C, *s, device=device, generator=g) for s in shapes] for _ in range(self.accum)
        ]
        self.labels = torch.randint(0, cfg.model.num_classes, (self.micro,), device=device, generator=g)

    def step(self, k: int) -> float:
        """Optimizer step k (its accum micro-steps); returns the mean loss (host sync)."""
        from dfm_video.dfm import dfm_objective
        from dfm_video.dfm.objective import sample_generators

        eng = self.engine
        losses = []
        for a in range(self.accum):
            gens = sample_generators(self.cfg.train.seed, (k * self.accum + a) * self.micro, self.micro, self.device)
            out = dfm_objective(
                lambda x, t, act, y: eng([v.to(self.dtype) for v in x], t, act, y),
                self.levels[a],
                self.labels,
                self.params,
                class_dropout=self.cfg.model.class_dropout,
                null_class=eng.module.null_class,
                generator=gens,
            )
            eng.backward(out.loss)
            eng.step()
            losses.append(out.loss.detach())
        self.ema.update()
        return float(torch.stack(losses).float().mean())

    def close(self) -> None:
        # the scheduler holds the optimizer, which holds the fp32 master weights and Adam moments
        del self.engine, self.ema, self.scheduler, self.levels
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_trip(v: Variant, k: int, workdir: Path) -> tuple[list[list[Any]], bool]:
    """save -> step -> load -> same step: exact state equality and loss agreement; rows for the table."""
    from dfm_video.checkpoints import read_ema, tag_for
    from dfm_video.train.checkpoint import load_engine_state, save_checkpoint
    from dfm_video.train.state_dump import full_state

    root = workdir / "checkpoints"
    t0 = time.perf_counter()
    save_checkpoint(v.engine, root, k, {"step": k}, v.ema, keep_last=2, rank=0)
    save_s = time.perf_counter() - t0
    saved, saved_lr = full_state(v.engine, v.ema), v.scheduler.get_last_lr()
    loss_a = v.step(k)
    t0 = time.perf_counter()
    load_engine_state(v.engine, root, tag_for(k))
    v.ema.load_full(read_ema(root / tag_for(k)))
    _sync(v.device)
    load_s = time.perf_counter() - t0
    loaded = full_state(v.engine, v.ema)
    diff = [name for name in saved if not torch.equal(saved[name], loaded[name])]
    lr_ok = v.scheduler.get_last_lr() == saved_lr
    loss_b = v.step(k)
    sizes: dict[str, int] = {}
    for f in (root / tag_for(k)).iterdir():
        kind = (
            "ema"
            if f.name.startswith("ema")
            else "optimizer"
            if "optim" in f.name
            else "model"
            if "model" in f.name
            else "other"
        )
        sizes[kind] = sizes.get(kind, 0) + f.stat().st_size
    ok = not diff and lr_ok and math.isclose(loss_a, loss_b, rel_tol=1e-3)
    rows = [
        ["save s", f"{save_s:.1f}"],
        ["load s", f"{load_s:.1f}"],
        ["tensors compared (fp32, exp_avg, exp_avg_sq, ema)", str(len(saved))],
        ["tensors differing after load", str(len(diff)) + (f" e.g. {diff[:3]}" if diff else "")],
        ["LR equal after load", str(lr_ok)],
        [
            "loss of the next step: before save / after load",
            f"{loss_a:.6f} / {loss_b:.6f} (|diff| {abs(loss_a - loss_b):.2e})",
        ],
    ] + [[f"checkpoint {kind} GB", f"{n / 1e9:.2f}"] for kind, n in sorted(sizes.items())]
    rows.append(["round trip", "PASS" if ok else "FAIL"])
    return rows, ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized smoke test (forced without a GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip the round trip when it would end past this (default: $GPU_CHECK_SECTION_BUDGET_S or 140)",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="override the measured peak for the second MFU column"
    )
    args = p.parse_args(argv)
    start = time.perf_counter()
    on_gpu = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    budget = args.budget_s or float(os.environ.get("GPU_CHECK_SECTION_BUDGET_S", "140"))
    _single_process_env(on_gpu)

    from dfm_video.config import load_config
    from dfm_video.models import stage_patch_sizes, training_flops
    from dfm_video.train.ds_config import build_deepspeed_config
    from dfm_video.train.engine import init_distributed

    common = [
        "distributed.zero_stage=2",
        "distributed.precision=bf16",
        "distributed.micro_batch_size=1",
        "distributed.global_batch_size=2",
    ]
    if on_gpu:
        cfg = load_config("k700.yaml", common)
        grid = (13, 32, 32)
    else:
        cfg = load_config("tiny.yaml", common + ["distributed.backend=gloo"])
        grid = (3, 4, 4)
        args.warmup, args.steps = min(args.warmup, 1), min(args.steps, 2)
    init_distributed(cfg.distributed.backend)
    latent = (
        cfg.model.in_channels,
        *level_shapes_for_grid(grid, stage_patch_sizes(cfg.model.patch_size, cfg.dfm.factors), cfg.dfm.temporal_mode)[
            -1
        ],
    )
    flops_per_step = training_flops(cfg.model, cfg.dfm, latent[1:]) * cfg.distributed.global_batch_size
    measured = peak_tflops(device, args.peak_tflops)
    new_conf = build_deepspeed_config(cfg, 1)
    print(f"# DeepSpeed ZeRO-2 benchmark: {env_line(device)}")
    print(
        f"{cfg.model.name if on_gpu else 'tiny'}: latent {latent}, "
        f"{math.prod(grid)} tokens, micro 1 x accumulation 2, bf16, "
        f"{args.warmup} warm-up + {args.steps} timed optimizer "
        f"steps; MFU vs datasheet {DATASHEET_PEAK:.0f} and measured "
        f"{measured or 'unknown'} TFLOP/s",
        flush=True,
    )

    header = ["settings", "ms/step", "TFLOP/s", "MFU % (989)", "MFU % (measured)", "peak GiB", "init s", "x old"]
    table, status, old_ms, keep = [], 0, None, None
    for name, conf in (("old", old_deepspeed_config(new_conf)), ("new", new_conf)):
        try:
            t0 = time.perf_counter()
            v = Variant(cfg, conf, device, grid)
            init_s = time.perf_counter() - t0
            for k in range(args.warmup):
                v.step(k)
            _sync(device)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for k in range(args.warmup, args.warmup + args.steps):
                v.step(k)
            _sync(device)
            ms = (time.perf_counter() - t0) * 1000 / args.steps
        except Exception as e:  # noqa: BLE001 - report and go on
            status = 1
            table.append([name, "error", "-", "-", "-", "-", "-", f"{type(e).__name__}: {str(e)[:120]}"])
            print("measured:", "  ".join(map(str, table[-1])), flush=True)
            continue
        tflops = flops_per_step / (ms / 1000) / 1e12
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else float("nan")
        old_ms = ms if name == "old" else old_ms
        table.append(
            [
                name,
                f"{ms:.1f}",
                f"{tflops:.1f}",
                f"{100 * tflops / DATASHEET_PEAK:.1f}",
                f"{100 * tflops / measured:.1f}" if measured else "-",
                f"{mem:.1f}",
                f"{init_s:.1f}",
                f"{ms / old_ms:.3f}" if old_ms else "-",
            ]
        )
        print("measured:", "  ".join(map(str, table[-1])), flush=True)
        if name == "new":
            keep = v
        else:
            v.close()
    print_table("DeepSpeed ZeRO-2 step: old vs new settings", header, table)

    if keep is None:
        print("round trip: skipped (the `new` engine failed)")
        return 1
    elapsed = time.perf_counter() - start
    est = 60.0 if on_gpu else 5.0
    if elapsed + est > budget:
        print(f"round trip: skipped ({elapsed:.0f} s elapsed + ~{est:.0f} s would pass the {budget:.0f} s budget)")
        return status
    with tempfile.TemporaryDirectory(prefix="bench_ds_") as tmp:
        rows, ok = round_trip(keep, args.warmup + args.steps, Path(tmp))
    print_table(
        "checkpoint round trip on the device: save -> step -> load -> same step (ZeRO-2, new settings)",
        ["check", "value"],
        rows,
    )
    print(f"# bench_deepspeed done in {time.perf_counter() - start:.0f} s")
    return status if ok else 1


if __name__ == "__main__":
    sys.exit(main())
