"""Slurm's task variables as the torch.distributed launch variables.

`srun python dfm_video/train.py ...` (one task per GPU) starts every process with SLURM_PROCID,
SLURM_LOCALID and SLURM_STEP_NUM_TASKS but no RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT, which torch's env:// rendezvous reads. `from_slurm()` fills them in; a launcher's own
variables (torchrun, deepspeed, or torchrun inside srun) always win, and nothing is set outside a
job step, so a batch script's own shell (which has SLURM_PROCID=0 and SLURM_NTASKS=N but is not one
of the N tasks) is never mistaken for rank 0 of N.
"""

from __future__ import annotations

import logging
import os
import re
from typing import MutableMapping, Optional

log = logging.getLogger(__name__)

#: Ports derived from the job id land in [BASE_PORT, BASE_PORT + PORT_SPAN): every job of a
#: shared node gets its own, and a requeued job (same id) the same one again.
BASE_PORT = 20000
PORT_SPAN = 20000


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: 'gpu[012-015,020],login1' -> 'gpu012'."""
    text = nodelist.strip()
    match = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", text)
    if not text or not match:
        raise ValueError(f"cannot read a host from the Slurm node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",", 1)[0].split("-", 1)[0]


def from_slurm(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from an srun task's variables.

    Returns True when it set them. Does nothing where a launcher already set RANK or WORLD_SIZE, or
    outside a Slurm job step. MASTER_ADDR defaults to the step's first node and MASTER_PORT to one
    derived from the job id; a value already in the environment (e.g. exported by the sbatch script)
    is kept.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env:
        return False
    if "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return False
    try:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        rank = int(env["SLURM_PROCID"])
        local = int(env.get("SLURM_LOCALID", "0"))
        job = int(env.get("SLURM_JOB_ID", "0"))
    except ValueError as exc:
        raise ValueError(f"Slurm task variables are not integers: {exc}") from None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    env["RANK"] = str(rank)
    env["WORLD_SIZE"] = str(world)
    env["LOCAL_RANK"] = str(local)
    if not env.get("MASTER_ADDR"):
        if not nodelist:
            raise ValueError("srun task without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST: set MASTER_ADDR")
        env["MASTER_ADDR"] = first_host(nodelist)
    if not env.get("MASTER_PORT"):
        env["MASTER_PORT"] = str(BASE_PORT + job % PORT_SPAN)
    if rank == 0:
        log.info("Slurm job %s: %d tasks, rendezvous at %s:%s", job, world, env["MASTER_ADDR"], env["MASTER_PORT"])
    return True
