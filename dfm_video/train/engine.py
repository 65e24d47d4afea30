"""The DeepSpeed seam: process-group setup and `deepspeed.initialize`. The only deepspeed import
in the project lives under dfm_video/train/."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from dfm_video import faults, launch_env


@dataclass
class TrainState:
    """What training updates and a checkpoint saves and restores: the DeepSpeed engine (model,
    optimizer and ZeRO state), the EMA, the client optimizer and the LR scheduler as DeepSpeed holds it."""

    engine: Any
    ema: Any
    optimizer: Any
    scheduler: Any


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def import_deepspeed() -> Any:
    """Import deepspeed with the CPU accelerator where there is no GPU (gloo, no shm JIT build)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not torch.cuda.is_available():
        # The shm comm op JIT-compiles for ~45 s on first use; plain gloo gives identical results.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def init_distributed(backend: str = "auto") -> DistInfo:
    """Start the process group from the launcher's environment (deepspeed, torchrun or srun)."""
    launch_env.from_slurm()
    deepspeed = import_deepspeed()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "dfm_video/train.py must be started by a launcher: `deepspeed dfm_video/train.py ...` or "
            "`torchrun --nproc_per_node N dfm_video/train.py ...` or `srun dfm_video/train.py ...` inside a Slurm "
            "allocation (no RANK/WORLD_SIZE in the environment)"
        )
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=backend)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def create_engine(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ds_config: dict, mpu: Any = None
) -> tuple[Any, Any]:
    """Wrap model + client optimizer + scheduler; returns (engine, scheduler as DeepSpeed holds it).

    `mpu`: the sequence-parallel groups (dfm_video.parallel.groups) or None.

    Fault `train.engine_init_error` = true: raise here, as a failing `deepspeed.initialize` would
    (an out-of-memory, a bad override), to test that nothing of an old run is deleted before it.
    """
    if faults.get("train.engine_init_error"):
        raise RuntimeError("injected fault train.engine_init_error: deepspeed.initialize failed")
    deepspeed = import_deepspeed()
    engine, _, _, sched = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, mpu=mpu
    )
    return engine, sched
