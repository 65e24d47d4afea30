"""Fine-tuning for real: a flow-matching run under ZeRO-3 on 2 CPU ranks, then a DFM run under ZeRO-2
initialised from its bare DeepSpeed checkpoint (weights rebuilt by zero_to_fp32), then a resume of
that DFM run, which ignores `train.init_from` and says so."""

from __future__ import annotations

import json
import shutil

import pytest
from train_helpers import deepspeed_cmd, read_metrics, run

from dfm_video.checkpoints import COMPLETE, EMA_FILE, META
from dfm_video.config import load_config, single_stage
from dfm_video.models import build_model

pytestmark = pytest.mark.slow

BATCH = ("distributed.global_batch_size=4", "distributed.micro_batch_size=2", "train.log_every=1")


def test_dfm_fine_tune_from_a_zero3_flow_matching_checkpoint(tiny_shards, tmp_path):
    fm = tmp_path / "fm"
    r = run(
        deepspeed_cmd(
            [f"data.shards={tiny_shards}", f"train.output_dir={fm}", "dfm=single_stage", "sample.steps=[8]"]
            + ["distributed.zero_stage=3", "train.steps=4", "train.ckpt_every=4", *BATCH]
        )
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # Another trainer's DeepSpeed folder: only DeepSpeed's own files and its `latest` pointer.
    bare = tmp_path / "bare"
    shutil.copytree(fm / "checkpoints" / "step_00000004", bare / "global_step4")
    for name in (EMA_FILE, META, COMPLETE):
        (bare / "global_step4" / name).unlink()
    (bare / "latest").write_text("global_step4")

    out = tmp_path / "dfm"
    args = [f"data.shards={tiny_shards}", f"train.output_dir={out}", f"train.init_from={bare}"]
    args += ["model.upsample_factors=[[1, 2, 2], [1, 1, 1]]", "train.ckpt_every=2", *BATCH]
    r = run(deepspeed_cmd(args + ["train.steps=2"]))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "init_from.json").read_text())
    assert summary["source_stages"] == 1 and summary["target_stages"] == 2
    fm_model = build_model(*(lambda c: (c.model, c.dfm))(single_stage(load_config("tiny.yaml"))))
    assert summary["copied"]["tensors"] == len(fm_model.state_dict()) and summary["ignored"]["tensors"] == 0
    assert "zero-initialised" in r.stdout + r.stderr
    m = read_metrics(out)
    assert m[1]["loss/stage1"] < 10 and m[2]["step"] == 2

    r = run(deepspeed_cmd(args + ["train.steps=3"]))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "train.init_from=" in r.stderr + r.stdout and "ignored" in r.stderr + r.stdout
    assert read_metrics(out)[3]["step"] == 3
