"""dfm_video/launch_env.py: an srun task's Slurm variables become torch.distributed's launch variables
(the real srun path runs in tests/test_slurm.py)."""

import pytest

from dfm_video.launch_env import BASE_PORT, PORT_SPAN, first_host, from_slurm

TASK = {
    "SLURM_JOB_ID": "12345",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NUM_TASKS": "16",
    "SLURM_STEP_NODELIST": "gpu[007-008]",
    "SLURM_JOB_NODELIST": "gpu[007-008]",
}


@pytest.mark.parametrize(
    "nodelist,host",
    [("vm", "vm"), ("gpu[012-015,020],login1", "gpu012"), ("a-1,b-2", "a-1"), ("n[3]", "n3"), ("x[01,05-07]", "x01")],
)
def test_first_host_of_a_slurm_hostlist(nodelist, host):
    assert first_host(nodelist) == host


def test_an_srun_task_gets_rank_world_local_rank_and_a_rendezvous():
    env = dict(TASK)
    assert from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("9", "16", "1")
    assert env["MASTER_ADDR"] == "gpu007" and env["MASTER_PORT"] == str(BASE_PORT + 12345 % PORT_SPAN)
    kept = {**TASK, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}  # exported by the sbatch script
    assert from_slurm(kept) and (kept["MASTER_ADDR"], kept["MASTER_PORT"]) == ("10.0.0.7", "29500")


def test_launchers_win_and_the_batch_shell_is_not_a_task():
    torchrun = {**TASK, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}  # torchrun inside srun
    assert not from_slurm(torchrun) and torchrun["RANK"] == "3" and torchrun["WORLD_SIZE"] == "4"
    # The batch script's own shell has SLURM_PROCID=0 and SLURM_NTASKS but is no job step task.
    batch = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_NODELIST": "gpu[1-2]"}
    assert not from_slurm(batch) and "RANK" not in batch
    assert not from_slurm({})


def test_bad_values_name_the_problem():
    with pytest.raises(ValueError, match="not integers"):
        from_slurm({**TASK, "SLURM_PROCID": "x"})
    with pytest.raises(ValueError, match="node list"):
        first_host("")
