"""Training metrics: accumulated on the device every step, reduced and printed only on log steps.

Names are namespaced (`loss/total`, `loss/stage1`, `time/data_wait(%)`, `perf/mfu(%)`, ...) and go
to the console (rank 0) and TensorBoard.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm


class SectionTimer:
    """Milliseconds spent in one section of the step (e.g. the optimizer step, the EMA update).

    On CUDA it records events around the section and reads them only in `mean_ms` (on log steps),
    so timing adds no host sync to the step; on CPU it reads the wall clock.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.host_s = 0.0
        self.count = 0
        self._start: object = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            raise RuntimeError("SectionTimer.stop() without start()")
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((self._start, end))
        else:
            self.host_s += time.perf_counter() - self._start
        self.count += 1
        self._start = None

    def mean_ms(self) -> float:
        """Mean milliseconds per section since the last call (0 when it did not run), then reset."""
        if self.cuda:
            if self.pairs:
                self.pairs[-1][1].synchronize()
            total = sum(a.elapsed_time(b) for a, b in self.pairs)
        else:
            total = 1000.0 * self.host_s
        mean = total / self.count if self.count else 0.0
        self.pairs, self.host_s, self.count = [], 0.0, 0
        return mean


class MetricAccumulator:
    """Sums per-step device tensors between log steps; `reduce()` is the only host sync."""

    def __init__(self, num_stages: int, device: torch.device) -> None:
        self.num_stages = num_stages
        self.device = device
        # rank 0's time in the optimizer step (DeepSpeed's boundary step: clipping, AdamW, ZeRO's
        # gather of the updated weights) and in the EMA update, per optimizer step
        self.timers = {"optimizer": SectionTimer(device), "ema": SectionTimer(device)}
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device, dtype=torch.float64)
        self.stage_loss = torch.zeros(self.num_stages, device=self.device, dtype=torch.float64)
        self.stage_count = torch.zeros(self.num_stages, device=self.device, dtype=torch.float64)
        self.micro_steps = 0
        self.samples = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(
        self, loss: torch.Tensor, per_stage: torch.Tensor, count: torch.Tensor, samples: int, data_wait: float
    ) -> None:
        self.loss += loss.detach().double()
        self.stage_loss += (per_stage.detach() * count.detach()).double()
        self.stage_count += count.detach().double()
        self.micro_steps += 1
        self.samples += samples
        self.data_wait += data_wait

    def reduce(self) -> dict[str, float]:
        """All-reduce across ranks and return host floats (one sync per log step)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        packed = torch.cat(
            [
                self.loss.view(1),
                self.stage_loss,
                self.stage_count,
                torch.tensor(
                    [float(self.micro_steps), float(self.samples), self.data_wait],
                    device=self.device,
                    dtype=torch.float64,
                ),
            ]
        )
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)
            world = dist.get_world_size()
        v = packed.tolist()
        S = self.num_stages
        micro, samples, wait = v[1 + 2 * S :]
        out = {"loss/total": v[0] / max(micro, 1)}
        for s in range(S):
            count = v[1 + S + s]
            if count:  # a stage no sample trained in this window has no loss to report
                out[f"loss/stage{s + 1}"] = v[1 + s] / count
            out[f"train/stage{s + 1}_fraction"] = count / max(samples, 1)
        out["perf/samples_per_s"] = samples / elapsed
        out["time/data_wait(%)"] = 100.0 * wait / (world * elapsed)
        for name, timer in self.timers.items():
            out[f"time/{name}_ms"] = timer.mean_ms()
        return out


class MetricWriter:
    """Console line, `metrics.jsonl` (full precision) and TensorBoard, on rank 0."""

    def __init__(self, log_dir: Optional[str], rank: int, jsonl: Optional[str] = None) -> None:
        self.rank = rank
        self.tb = None
        self.jsonl = open(jsonl, "a") if rank == 0 and jsonl else None
        if rank == 0 and log_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        keys = [
            "loss/total",
            "grad_norm",
            "lr",
            "perf/samples_per_s",
            "perf/tokens_per_s",
            "time/data_wait(%)",
            "time/optimizer_ms",
            "time/ema_ms",
            "perf/mfu(%)",
            "mem/peak_gib",
        ]
        parts = [f"step {step}"] + [f"{k} {metrics[k]:.4g}" for k in keys if k in metrics]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("loss/stage")]
        tqdm.write(" | ".join(parts))  # keeps the rank-0 progress bar intact

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
