"""The network call of sampling replayed as a CUDA graph (`sample.cuda_graphs`).

While sampling, every call of one batch has the same input shapes (the levels, t, active, labels),
so one capture per shape signature replays the whole forward (all blocks, every kernel launch) as
one graph launch: at batch 1 the GPU otherwise waits on Python and launch overhead. Batched CFG
with `cfg_interval` alternates 2B and B rows: two captures, sharing one memory pool.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Forward = Callable[[list[Tensor], Tensor, Tensor, Tensor], list[Tensor]]


class GraphedForward:
    """`fn(levels, t, active, y) -> list[Tensor]` captured once per input signature, then replayed.

    Inputs are copied into static buffers; outputs are cloned out of the graph's buffers (the next
    replay overwrites them). Capture warms up on a side stream first (compilation, autotuning and
    lazily built tables happen there, not inside the capture).
    """

    def __init__(self, fn: Forward, device: torch.device, warmup: int = 2) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"sample.cuda_graphs=true needs the model on a CUDA device, got {device}")
        self.fn, self.device, self.warmup = fn, device, warmup
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[Tensor], list[Tensor]]] = {}

    @staticmethod
    def signature(inputs: list[Tensor]) -> tuple:
        return tuple((tuple(x.shape), x.dtype) for x in inputs)

    def _capture(self, inputs: list[Tensor], n_levels: int) -> tuple[torch.cuda.CUDAGraph, list[Tensor], list[Tensor]]:
        static = [x.detach().clone() for x in inputs]

        def call() -> list[Tensor]:
            return self.fn(static[:n_levels], *static[n_levels:])

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                call()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = call()
        return graph, static, outputs

    @torch.no_grad()
    def __call__(self, levels: list[Tensor], t: Tensor, active: Tensor, y: Tensor) -> list[Tensor]:
        inputs = [*levels, t, active, y]
        key = (len(levels), self.signature(inputs))
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, len(levels))
        graph, static, outputs = self.graphs[key]
        for buf, x in zip(static, inputs):
            buf.copy_(x, non_blocking=True)
        graph.replay()
        return [o.clone() for o in outputs]
