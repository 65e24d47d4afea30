"""Activation-memory planner: which checkpointing policy a training layout needs (pure arithmetic).

The trainer calls `plan_memory` with the GPU's memory before any process group; tests call it with
memory sizes of their own. Bytes per rank, at the peak of a training step:

- activations kept for backward, per token per block (bf16):
    none       70 D bytes (81 KB at D = 1152: the upper end of the 75-81 KB measured on an H200 at
               DiT3D-XL, docs/performance.md, "GPU layer measurements")
    selective  22 D: the block input (D values) plus the outputs of the saved ops: qkv (3 D),
               attention (D), out projection (D), fc1 (4 D), fc2 (D) = 11 D values; every
               elementwise op is recomputed
    full       2 D: the block input only
  plus, with selective or full, one block recomputed at a time (70 D per token, transient);
- model states per parameter: bf16 weights 2 (1/W under ZeRO-3), bf16 gradients 2 (1/W under
  ZeRO-2/3), fp32 gradient accumulation 4 (1/W under ZeRO-2/3), fp32 master weights and Adam
  moments 12 (1/W under ZeRO-1/2/3), W = world size;
- a fixed reserve for what the model does not count (DeepSpeed's buckets, CUDA context, cuBLAS
  workspaces, allocator fragmentation): 10 GiB, calibrated so the one-GPU ZeRO-2 step of
  configs/k700.yaml with full checkpointing gives the measured 25.4 GiB peak (docs/performance.md);
- usable memory: 95% of the device's total.

Sequence parallelism N divides the tokens (and so the activations) of every sample by N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POLICIES = ("none", "selective", "full")  # cheapest (least recomputation) first
ACT_BYTES_PER_DIM = {"none": 70, "selective": 22, "full": 2}  # x D, per token per block
RECOMPUTE_BYTES_PER_DIM = 70  # one block's activations while it is recomputed (selective, full)
RESERVE_BYTES = 10 * 2**30
USABLE_FRACTION = 0.95
# Extra compute of each policy over a plain forward + backward (3 forward units): full repeats the
# forward (4/3); selective repeats only the elementwise ops (a few percent of the block's time).
RECOMPUTE_COST = {"none": 0.0, "selective": 0.05, "full": 1.0 / 3.0}


@dataclass(frozen=True)
class Layout:
    """What the peak depends on: the model (depth, width, parameters) and how a rank runs it."""

    depth: int
    hidden_size: int
    num_params: int
    tokens: int
    """Tokens per sample (all stages map onto one token grid)."""
    micro_batch: int
    zero_stage: int
    world_size: int
    sequence_parallel: int = 1


@dataclass(frozen=True)
class MemoryPlan:
    policy: str
    peak_bytes: int
    usable_bytes: int
    estimates: dict[str, int]
    """Estimated peak per policy, bytes."""

    def describe(self) -> str:
        gib = 2**30
        per = ", ".join(f"{p} {b / gib:.1f} GiB" for p, b in self.estimates.items())
        return (
            f"activation checkpointing '{self.policy}': estimated peak {self.peak_bytes / gib:.1f} GiB of "
            f"{self.usable_bytes / gib:.1f} GiB usable ({per})"
        )


def state_bytes(layout: Layout) -> int:
    """Model states per rank: weights, gradients, fp32 accumulation, master weights and Adam moments."""
    w, z, p = layout.world_size, layout.zero_stage, layout.num_params
    weights = 2 * p / (w if z >= 3 else 1)
    grads = (2 + 4) * p / (w if z >= 2 else 1)
    optim = 12 * p / (w if z >= 1 else 1)
    return int(weights + grads + optim)


def activation_bytes(layout: Layout, policy: str) -> int:
    """Activations per rank at the peak of the backward pass under `policy`."""
    if policy not in ACT_BYTES_PER_DIM:
        raise ValueError(f"unknown activation checkpointing policy {policy!r} (expected one of {POLICIES})")
    tokens = layout.micro_batch * math.ceil(layout.tokens / layout.sequence_parallel)
    d = layout.hidden_size
    kept = ACT_BYTES_PER_DIM[policy] * d * tokens * layout.depth
    transient = 0 if policy == "none" else RECOMPUTE_BYTES_PER_DIM * d * tokens
    return kept + transient


def estimate_peak(layout: Layout, policy: str) -> int:
    return state_bytes(layout) + activation_bytes(layout, policy) + RESERVE_BYTES


def plan_memory(layout: Layout, device_bytes: int, requested: str = "auto") -> MemoryPlan:
    """The policy to run: `requested` itself, or under `auto` the cheapest that fits `device_bytes`.

    ValueError (with the estimates) when `auto` finds no policy that fits.
    """
    if requested != "auto" and requested not in POLICIES:
        raise ValueError(f"unknown activation checkpointing policy {requested!r} (expected auto or one of {POLICIES})")
    usable = int(device_bytes * USABLE_FRACTION)
    estimates = {p: estimate_peak(layout, p) for p in POLICIES}
    if requested != "auto":
        return MemoryPlan(requested, estimates[requested], usable, estimates)
    for policy in POLICIES:
        if estimates[policy] <= usable:
            return MemoryPlan(policy, estimates[policy], usable, estimates)
    gib = 2**30
    raise ValueError(
        f"model.activation_checkpointing=auto: this layout does not fit in {usable / gib:.1f} GiB "
        f"({USABLE_FRACTION:.0%} of {device_bytes / gib:.1f} GiB) with any policy: "
        + ", ".join(f"{p} {b / gib:.1f} GiB" for p, b in estimates.items())
        + f" (model states {state_bytes(layout) / gib:.1f} GiB, reserve {RESERVE_BYTES / gib:.0f} GiB; "
        f"{layout.tokens} tokens x micro batch {layout.micro_batch}, ZeRO-{layout.zero_stage}, "
        f"{layout.world_size} ranks, sequence parallel {layout.sequence_parallel}); lower "
        "distributed.micro_batch_size, raise distributed.zero_stage or distributed.sequence_parallel"
    )
