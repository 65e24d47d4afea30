"""One optimizer step: `accum` micro-batches -> DFM objective -> backward -> ZeRO step.

Every random draw of a sample (stage, t, noise, label dropout) comes from a generator seeded by
(train.seed, global sample position), independent of world size and micro batch, so a resume on
another world size continues the same run.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Optional

import torch

from dfm_video import faults
from dfm_video.config import Config
from dfm_video.dfm import TimestepParams, dfm_objective
from dfm_video.dfm.objective import sample_generators
from dfm_video.train.metrics import MetricAccumulator
from dfm_video.train.nonfinite import all_finite


class InjectedFaults:
    """Non-finite losses or gradients at chosen (1-based) steps, for the tests of the skip path.

    Fault `train.nan_loss` = {"at_step": N, "times": K}: the loss of steps N .. N+K-1 is NaN
    (K defaults to 1). Fault `train.inf_grad` = {"at_step": N}: step N's loss is finite but the
    gradient of the model output is scaled by inf. Fault `train.nan_weights` = {"at_step": N}: after
    step N every rank's first weight tensor is NaN, as if a non-finite update had been applied.
    Fault `train.micro_step_pause` = S: every micro-step sleeps S seconds (a long accumulation step,
    to send a signal into).
    """

    def __init__(self) -> None:
        nan, inf = faults.get("train.nan_loss"), faults.get("train.inf_grad")
        bad = faults.get("train.nan_weights")
        self.weight_step = int(bad["at_step"]) if bad else None
        self.pause = float(faults.get("train.micro_step_pause", 0.0))
        self.loss_steps = (
            set(range(int(nan["at_step"]), int(nan["at_step"]) + int(nan.get("times", 1)))) if nan else set()
        )
        self.grad_steps = {int(inf["at_step"])} if inf else set()

    def loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.loss_steps else loss

    def weights(self, step: int, module: torch.nn.Module) -> None:
        if step == self.weight_step:
            p = next(module.parameters())
            local = getattr(p, "ds_tensor", None)
            with torch.no_grad():
                (local if local is not None else p).fill_(float("nan"))

    def outputs(self, step: int, pred: list[torch.Tensor]) -> list[torch.Tensor]:
        """Finite forward, infinite gradient: scale the incoming gradient of the model output by inf."""
        if step in self.grad_steps and pred[0].requires_grad:
            pred[0].register_hook(lambda g: g * float("inf"))
        return pred


class TrainStep:
    """`step(n, consumed)` runs optimizer step n (1-based) and returns (samples consumed after it,
    whether any micro-batch's loss was non-finite on any rank).

    `stop_requested` (collective, e.g. a SIGTERM agreed over ranks) is asked between micro-steps:
    when it says stop, the step is abandoned before its optimizer update (`interrupted` is set, the
    returned count is the one passed in) so the caller can save step n - 1 at once instead of
    finishing a long accumulation first.
    """

    def __init__(
        self,
        cfg: Config,
        engine: Any,
        batches: Iterator[tuple[list[torch.Tensor], torch.Tensor]],
        metrics: MetricAccumulator,
        *,
        accum: int,
        dp_rank: int,
        dp_size: int,
        sp: int,
        device: torch.device,
        stop_requested: Optional[Callable[[], bool]] = None,
    ) -> None:
        self.cfg, self.engine, self.batches, self.metrics = cfg, engine, batches, metrics
        self.accum, self.dp_rank, self.sp, self.device = accum, dp_rank, sp, device
        self.micro = cfg.distributed.micro_batch_size
        self.micro_per_step = dp_size * self.micro
        self.params = TimestepParams.from_config(cfg.dfm)
        self.dtype = torch.bfloat16 if cfg.distributed.precision == "bf16" else torch.float32
        self.faults = InjectedFaults()
        self.stop_requested = stop_requested
        self.interrupted = False

    def __call__(self, step: int, consumed: int) -> tuple[int, bool]:
        cfg, engine = self.cfg, self.engine

        def velocity(x: list[torch.Tensor], t: torch.Tensor, active: torch.Tensor, y: torch.Tensor) -> Any:
            return self.faults.outputs(step, engine([v.to(self.dtype) for v in x], t, active, y))

        loss_bad, before = False, consumed
        for i in range(self.accum):
            if i > 0 and self.stop_requested is not None and self.stop_requested():
                self.interrupted = True
                return before, loss_bad
            if self.faults.pause:
                time.sleep(self.faults.pause)
            t0 = time.perf_counter()
            levels, labels = next(self.batches)
            wait = time.perf_counter() - t0
            # Per-sample random streams keyed by the global sample position: the same draws whatever
            # the world size and micro batch.
            gens = sample_generators(cfg.train.seed, consumed + self.dp_rank * self.micro, labels.shape[0], self.device)
            consumed += self.micro_per_step
            out = dfm_objective(
                velocity,
                levels,
                labels,
                self.params,
                class_dropout=cfg.model.class_dropout,
                null_class=engine.module.null_class,
                generator=gens,
            )
            loss = self.faults.loss(step, out.loss)
            finite = all_finite(loss)
            loss_bad |= not finite
            engine.backward(loss)  # a NaN loss gives NaN gradients: DeepSpeed then skips the whole step
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                self.metrics.timers["optimizer"].start()
            engine.step()
            if boundary:
                self.metrics.timers["optimizer"].stop()
            if finite:  # samples counted once per sequence-parallel group
                self.metrics.add(loss, out.per_stage, out.active_count, self.micro / self.sp, wait)
        self.faults.weights(step, engine.module)
        return consumed, loss_bad
