"""The checkpoint manager (train/checkpoint.py) and the config comparison (train/config_changes.py)
without a launcher: which checkpoint a run resumes from, pruning, torn or stray folders, and what
may change on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dfm_video.checkpoints import (
    complete_tags,
    latest_tag,
    read_checkpoint_weights,
    read_ema,
    read_meta,
    resolve_weights_source,
    tag_for,
    weights_step,
)
from dfm_video.config import config_to_dict, load_config
from dfm_video.train.checkpoint import CheckpointManager, clear_run, plan_start, prune, record_config
from dfm_video.train.config_changes import (
    apply_optim_changes,
    compare_configs,
    data_fingerprint,
    legacy_data_fingerprint,
    stored_fingerprint,
)
from dfm_video.train.ds_config import build_deepspeed_config
from dfm_video.train.durable import atomic_write, fsync_tree, remove_dir


def _fake_ckpt(
    root: Path, step: int, cfg: dict | None = None, complete: bool = True, world: int = 2, stage: int = 2
) -> Path:
    """A checkpoint folder as save_checkpoint leaves it (DeepSpeed's files are not needed here)."""
    d = root / tag_for(step)
    d.mkdir(parents=True)
    save_file({"w": torch.full((3,), float(step))}, str(d / "ema.safetensors"))
    meta = {
        "step": step,
        "samples_consumed": 6 * step,
        "world_size": world,
        "zero_stage": stage,
        "config": cfg or {},
        "dataset_meta": {"labels": []},
        "data_fingerprint": "abc",
    }
    (d / "meta.json").write_text(json.dumps(meta))
    if complete:
        (d / "COMPLETE").write_text(f"{step}\n")
    return d


def _point(root: Path, step: int) -> None:
    (root / "latest").write_text(tag_for(step) + "\n")


def test_latest_is_the_pointer_not_the_highest_step(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (8, 16, 24):
        _fake_ckpt(root, s)
    _point(root, 16)  # rolled back: 24 is an abandoned timeline's
    assert latest_tag(root) == "step_00000016"
    (root / "step_00000032.partial").mkdir()  # a torn save is never a candidate
    _fake_ckpt(root, 40, complete=False)
    assert complete_tags(root) == ["step_00000008", "step_00000016", "step_00000024"]
    assert latest_tag(root) == "step_00000016"


def test_missing_or_dangling_latest_is_a_clear_error(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_tag(root) is None  # a fresh run
    _fake_ckpt(root, 8)
    with pytest.raises(ValueError, match="no 'latest' pointer.*--resume .*step_00000008"):
        latest_tag(root)
    _point(root, 16)
    with pytest.raises(ValueError, match="names step_00000016, but .* missing"):
        latest_tag(root)
    (root / "latest").write_text("../../etc\n")
    with pytest.raises(ValueError, match="not a checkpoint tag"):
        latest_tag(root)


def test_prune_keeps_the_new_checkpoint_and_its_predecessors_only(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (8, 16, 24, 32):
        _fake_ckpt(root, s)
    (root / "step_00000040.partial").mkdir()
    (root / "step_00000004.deleting").mkdir()
    # a rollback run just wrote step 16 again: 24 and 32 (later, stale) are not counted against it
    assert prune(root, keep_last=2, just_written="step_00000016") == []
    assert complete_tags(root) == ["step_00000008", "step_00000016", "step_00000024", "step_00000032"]
    assert not list(root.glob("*.partial")) and not list(root.glob("*.deleting"))
    assert prune(root, keep_last=1, just_written="step_00000016") == ["step_00000008"]
    assert prune(root, keep_last=2, just_written="step_00000032") == ["step_00000016"]
    assert complete_tags(root) == ["step_00000024", "step_00000032"]


def test_remove_dir_never_leaves_a_valid_name_behind(tmp_path):
    d = _fake_ckpt(tmp_path, 8)
    remove_dir(d)
    assert not d.exists() and not (tmp_path / "step_00000008.deleting").exists()


def test_missing_or_truncated_files_are_clear_errors(tmp_path):
    d = _fake_ckpt(tmp_path, 8)
    weights, _, meta, partitioned = read_checkpoint_weights(d)
    assert torch.equal(weights["w"], torch.full((3,), 8.0)) and not partitioned and meta == {"labels": []}
    data = (d / "ema.safetensors").read_bytes()
    (d / "ema.safetensors").write_bytes(data[: len(data) - 5])
    with pytest.raises(ValueError, match="cannot read ema.safetensors"):
        read_ema(d)
    (d / "ema.safetensors").unlink()
    with pytest.raises(ValueError, match="has no ema.safetensors"):
        read_ema(d)
    (d / "meta.json").write_text('{"step": 8')  # truncated JSON
    with pytest.raises(ValueError, match="cannot read meta.json"):
        read_meta(d)
    (d / "COMPLETE").unlink()
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        read_meta(d)


def test_config_changes_are_sorted_into_refused_logged_and_allowed():
    old = config_to_dict(load_config(None, ["optim.lr=1e-4"]))
    same = compare_configs(old, old)
    assert same == []
    harmless = config_to_dict(
        load_config(None, ["optim.lr=1e-4", "train.steps=9", "train.log_every=7", "distributed.micro_batch_size=2"])
    )
    assert len(compare_configs(old, harmless)) == 3
    bad = config_to_dict(
        load_config(
            None,
            ["optim.lr=1e-4", "model.depth=3", "train.seed=5", "distributed.global_batch_size=512"],
        )
    )
    with pytest.raises(ValueError) as e:
        compare_configs(old, bad)
    for key in ("model.depth", "train.seed", "distributed.global_batch_size"):
        assert key in str(e.value)
    lr = config_to_dict(load_config(None, ["optim.lr=3e-4", "optim.warmup_steps=9"]))
    with pytest.raises(ValueError, match="--allow-change optim.lr"):
        compare_configs(old, lr)
    assert len(compare_configs(old, lr, allow=["optim.lr", "optim.warmup_steps"])) == 2
    with pytest.raises(ValueError, match="would corrupt"):
        compare_configs(old, bad, allow=["model.depth"])  # corrupting changes cannot be allowed
    fp = {**old, "data": {**old["data"], "fingerprint": "a"}}
    with pytest.raises(ValueError, match="data.fingerprint"):
        compare_configs(fp, {**old, "data": {**old["data"], "fingerprint": "b"}})


def test_plan_start_guards_the_run_folder(tmp_path):
    cfg = config_to_dict(load_config(None, [f"train.output_dir={tmp_path}"]))
    assert plan_start(cfg, "abc", "none", tmp_path, 2, 2).checkpoint is None  # empty folder: fine
    record_config(tmp_path, cfg, 0, [])
    with pytest.raises(ValueError, match="already holds a run .*--overwrite"):
        plan_start(cfg, "abc", "none", tmp_path, 2, 2)
    assert plan_start(cfg, "abc", "none", tmp_path, 2, 2, overwrite=True).clear_first
    root = tmp_path / "checkpoints"
    _fake_ckpt(root, 8, cfg)
    _point(root, 8)
    plan = plan_start(cfg, "abc", "auto", tmp_path, 2, 2)
    assert plan.step == 8 and not plan.universal
    assert plan_start(cfg, "abc", "auto", tmp_path, 3, 2).universal  # another world size
    with pytest.raises(ValueError, match="written under ZeRO-2, this run uses distributed.zero_stage=3"):
        plan_start(cfg, "abc", "auto", tmp_path, 2, 3)
    with pytest.raises(ValueError, match="data.fingerprint"):
        plan_start(cfg, "other-data", "auto", tmp_path, 2, 2)
    assert len(list((tmp_path / "config_history").glob("*.yaml"))) == 1


def test_the_manager_plans_another_world_size_as_a_universal_load(tmp_path):
    cfg = config_to_dict(load_config(None, [f"train.output_dir={tmp_path}"]))
    ckpt = CheckpointManager(tmp_path, cfg, {"labels": []}, 12, keep_last=2, lr=1e-3)
    ds = {"train_batch_size": 6, "checkpoint": {"tag_validation": "Warn"}}
    assert ckpt.plan("auto", 2, 2).checkpoint is None and ckpt.deepspeed_config(ds) == ds  # a fresh run
    d = _fake_ckpt(tmp_path / "checkpoints", 8, cfg)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "data_fingerprint": ckpt.fingerprint}))
    _point(tmp_path / "checkpoints", 8)
    plan = ckpt.plan("auto", 2, 2)
    assert plan.checkpoint == d and plan.step == 8 and ckpt.deepspeed_config(ds) == ds  # same world size
    assert ckpt.plan("auto", 3, 2).universal
    universal = {"train_batch_size": 6, "checkpoint": {"tag_validation": "Warn", "load_universal": True}}
    assert ckpt.deepspeed_config(ds) == universal
    assert ds == {"train_batch_size": 6, "checkpoint": {"tag_validation": "Warn"}}  # not changed in place
    other_data = CheckpointManager(tmp_path, cfg, {"labels": ["dog"]}, 12, keep_last=2, lr=1e-3)
    with pytest.raises(ValueError, match="data.fingerprint"):
        other_data.plan("auto", 2, 2)


def test_an_allowed_lr_change_takes_effect_after_the_scheduler_state_is_restored():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    for _ in range(2):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=5e-4)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: min(1.0, (s + 1) / 4))
    sched2.load_state_dict(state)  # what DeepSpeed's load does: the old base lr comes back
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    apply_optim_changes(opt2, sched2, 5e-4)
    assert opt2.param_groups[0]["lr"] == 5e-4 * 3 / 4 and sched2.get_last_lr() == [5e-4 * 3 / 4]
    apply_optim_changes(opt, sched, 1e-3)  # unchanged config: a no-op, bit for bit
    assert opt.param_groups[0]["lr"] == 1e-3 * 3 / 4


def test_deepspeed_json_settings_and_overrides():
    cfg = load_config(None, ["distributed.zero_stage=2"])
    ds = build_deepspeed_config(cfg, 1)
    z = ds["zero_optimization"]
    assert (
        ds["data_types"] == {"grad_accum_dtype": "fp32"}
        and z["overlap_comm"]
        and z["reduce_bucket_size"] == z["allgather_bucket_size"]
    )
    z3 = build_deepspeed_config(load_config(None, ["distributed.zero_stage=3"]), 1)["zero_optimization"]
    assert z3["overlap_comm"] and "stage3_prefetch_bucket_size" in z3 and "allgather_bucket_size" not in z3
    over = load_config(
        None,
        [
            "distributed.deepspeed_overrides={zero_optimization: {reduce_bucket_size: 1000}, "
            "tensorboard: {enabled: true}}"
        ],
    )
    merged = build_deepspeed_config(over, 1)
    assert merged["zero_optimization"]["reduce_bucket_size"] == 1000 and merged["zero_optimization"]["overlap_comm"]
    assert merged["tensorboard"] == {"enabled": True}
    for bad, msg in (
        ("{train_batch_size: 8}", "set from the typed config"),
        ("{zero_optimization: {stage: 3}}", "set from the typed config"),
        ("{zero_optimization: {reduce_bucket_sizee: 1}}", "reduce_bucket_sizee"),
        ("{monitorr: {}}", "unknown or unsupported DeepSpeed key"),
    ):
        with pytest.raises(ValueError, match=msg):
            build_deepspeed_config(load_config(None, [f"distributed.deepspeed_overrides={bad}"]), 1)


def test_fsync_helpers_run_on_real_files(tmp_path):
    _fake_ckpt(tmp_path, 8)
    fsync_tree(tmp_path)
    atomic_write(tmp_path / "latest", "step_00000008\n")
    assert latest_tag(tmp_path) == "step_00000008" and not (tmp_path / "latest.tmp").exists()
    assert os.stat(tmp_path / "latest").st_size == len("step_00000008\n")


def test_config_keys_are_classified_by_what_they_change(tmp_path):
    base = ["optim.lr=1e-4", "data.shards=/mnt/a/shards"]
    # train.steps under a constant schedule changes only where the run ends: harmless
    const = config_to_dict(load_config(None, [*base, "optim.schedule=constant"]))
    longer = config_to_dict(load_config(None, [*base, "optim.schedule=constant", "train.steps=999"]))
    assert compare_configs(const, longer) == [f"train.steps: {const['train']['steps']} -> 999 (harmless)"]
    # under cosine it sets the decay span: extending a finished run would jump the LR off its floor
    cos = config_to_dict(load_config(None, [*base, "optim.schedule=cosine"]))
    cos_longer = config_to_dict(load_config(None, [*base, "optim.schedule=cosine", "train.steps=999"]))
    with pytest.raises(ValueError, match="train.steps: .* -> 999 .*cosine decay span.*--allow-change train.steps"):
        compare_configs(cos, cos_longer)
    assert "allowed by --allow-change" in compare_configs(cos, cos_longer, allow=["train.steps"])[0]
    # where the data is mounted is harmless (the fingerprint checks the content), for one dataset or a mix
    moved = config_to_dict(load_config(None, ["optim.lr=1e-4", "data.shards=/cluster/b/shards"]))
    assert compare_configs(config_to_dict(load_config(None, base)), moved)[0].endswith("(harmless)")
    mix = [{"shards": "/mnt/a/x", "weight": 0.7}, {"shards": "/mnt/a/y", "weight": 0.3}]
    old = config_to_dict(load_config(None, ["optim.lr=1e-4"]))
    old["data"] = {**old["data"], "shards": "", "mix": mix}
    new = {**old, "data": {**old["data"], "mix": [{**m, "shards": m["shards"].replace("/mnt/a", "/c")} for m in mix]}}
    assert compare_configs(old, new)[0].endswith("(harmless)")
    reweighted = {**old, "data": {**old["data"], "mix": [{**mix[0], "weight": 0.5}, mix[1]]}}
    with pytest.raises(ValueError, match="data.mix: .*would corrupt"):
        compare_configs(old, reweighted)


def test_the_data_fingerprint_ignores_bucket_paths_and_reads_older_checkpoints():
    meta = {"source": "/a", "labels": ["x"], "buckets": [{"name": "b0", "source": "/a/b0", "stats": [1.0]}]}
    moved = {"source": "/c", "labels": ["x"], "buckets": [{"name": "b0", "source": "/c/b0", "stats": [1.0]}]}
    assert data_fingerprint(meta, 9) == data_fingerprint(moved, 9) != data_fingerprint(meta, 10)
    older = {"data_fingerprint": legacy_data_fingerprint(meta, 9), "dataset_meta": meta}
    assert stored_fingerprint(older, 9) == data_fingerprint(moved, 9)
    assert stored_fingerprint({"data_fingerprint": "abc", "dataset_meta": meta}, 9) == "abc"


def test_a_run_directory_means_its_newest_weights(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_ckpt(root, 8)
    _fake_ckpt(root, 16)
    _point(root, 16)
    export = tmp_path / "export"
    export.mkdir()
    save_file({"w": torch.zeros(3)}, str(export / "model.safetensors"), metadata={"step": "8"})
    # an older export beside a newer checkpoint (a run resumed and extended): the checkpoint wins
    assert resolve_weights_source(tmp_path) == root / "step_00000016"
    assert weights_step(resolve_weights_source(tmp_path)) == 16
    save_file({"w": torch.zeros(3)}, str(export / "model.safetensors"), metadata={"step": "16"})
    assert resolve_weights_source(tmp_path) == export  # same step: the export (the same EMA, cheaper to load)


def test_overwrite_clears_everything_a_run_wrote(tmp_path):
    cfg = config_to_dict(load_config(None, [f"train.output_dir={tmp_path}"]))
    record_config(tmp_path, cfg, 0, [])
    for d in ("checkpoints", "tensorboard", "export", "wandb/run-1", "samples/step_8"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("metrics.jsonl", "wandb_id.txt", "loss.png", "wandb/run-1/events", "notes.txt"):
        (tmp_path / f).write_text("x")
    assert plan_start(cfg, "abc", "none", tmp_path, 2, 2, overwrite=True).clear_first
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the user's own files stay
