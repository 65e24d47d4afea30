"""`train.init_from`: every source kind read and checked before any process group, the summary file,
strict and partial loads, the key map for other layouts, and clear errors for bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dfm_video.checkpoints import COMPLETE, EMA_FILE, META
from dfm_video.config import config_to_dict, load_config, single_stage
from dfm_video.models import build_model
from dfm_video.train.config_changes import compare_configs
from dfm_video.train.export import export_weights
from dfm_video.train.init_from import SUMMARY_FILE, plan_init_from, read_init_source
from dfm_video.train.init_map import apply_key_map, load_key_map, map_state

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

UPSAMPLED = "model.upsample_factors=[[1, 2, 2], [1, 1, 1]]"


def dfm_cfg(out: Path, *extra: str):
    return load_config("tiny.yaml", [f"train.output_dir={out}", *extra])


def fm_model_and_cfg(*extra: str):
    cfg = single_stage(load_config("tiny.yaml", list(extra)))
    torch.manual_seed(3)
    model = build_model(cfg.model, cfg.dfm)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the heads start at zero: make every tensor tell
    return model, cfg


def write_export(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    model, cfg = fm_model_and_cfg(*extra)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return export_weights(weights, cfg, {}, tmp_path / "fm-export", step=7, autoencoder="none"), weights


def write_checkpoint(folder: Path, weights: dict, cfg, complete: bool = True) -> Path:
    """A checkpoint folder as CheckpointManager leaves it (EMA + meta; the DeepSpeed files are not read)."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / EMA_FILE))
    meta = dict(step=8, samples_consumed=32, world_size=2, zero_stage=3, config=config_to_dict(cfg), dataset_meta={})
    (folder / META).write_text(json.dumps(meta))
    if complete:
        (folder / COMPLETE).write_text("8\n")
    return folder


def test_export_initialises_dfm_model_and_writes_summary(tmp_path) -> None:
    export, weights = write_export(tmp_path)
    out = tmp_path / "run"
    cfg = dfm_cfg(out, f"train.init_from={export}", UPSAMPLED)
    init = plan_init_from(cfg, None)
    assert not out.exists()  # planning writes nothing
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dfm)
    init.apply(model, rank=0)
    state = model.state_dict()
    for k in ("blocks.1.fc2.weight", "y_embedder.weight", "patch_embed.0.weight", "final_layers.0.linear.bias"):
        assert torch.equal(state[k], weights[k])
    assert torch.count_nonzero(state["patch_embed.1.weight"]) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["source_stages"] == 1 and summary["target_stages"] == 2
    n_model = sum(v.numel() for v in state.values())
    total = sum(summary[k]["parameters"] for k in ("copied", "zeroed", "new"))
    assert total == n_model and summary["ignored"]["tensors"] == 0
    assert summary["copied"]["parameters"] == sum(v.numel() for v in weights.values())
    assert summary["zeroed"]["tensors"] == 2 + 2 + 4 + 1  # fine patch embed, t-MLP out, head, stage embedding


def test_without_upsampling_the_patch_mismatch_names_the_fix(tmp_path) -> None:
    export, _ = write_export(tmp_path)
    cfg = dfm_cfg(tmp_path / "run", f"train.init_from={export}")
    with pytest.raises(
        ValueError, match=r"patch is \(1, 2, 2\).*\(1, 1, 1\).*upsample_factors: \[\[1, 2, 2\], \[1, 1, 1\]\]"
    ):
        plan_init_from(cfg, None)


def test_run_directory_and_checkpoint_folders(tmp_path) -> None:
    model, fm_cfg = fm_model_and_cfg()
    weights = model.state_dict()
    run = tmp_path / "fm-run"
    write_checkpoint(run / "checkpoints" / "step_00000008", weights, fm_cfg)
    (run / "checkpoints" / "latest").write_text("step_00000008\n")
    src, got, cfg_dict = read_init_source(run)
    assert src == run / "checkpoints" / "step_00000008" and cfg_dict["dfm"]["factors"] == []
    assert all(torch.equal(got[k], weights[k]) for k in weights)
    # a universal checkpoint (zero/<name>/fp32.pt, what DeepSpeed's ds_to_universal writes)
    uni = tmp_path / "universal"
    for k, v in weights.items():
        (uni / "zero" / k).mkdir(parents=True)
        torch.save({"param": v.float()}, uni / "zero" / k / "fp32.pt")
    src, got, cfg_dict = read_init_source(uni)
    assert cfg_dict is None and all(torch.equal(got[k], weights[k]) for k in weights)
    cfg = dfm_cfg(tmp_path / "run", f"train.init_from={uni}", UPSAMPLED)
    assert plan_init_from(cfg, None).summary.source_stages == 1


def test_bad_sources_fail_naming_the_path_and_write_nothing(tmp_path) -> None:
    model, fm_cfg = fm_model_and_cfg()
    half = write_checkpoint(tmp_path / "half" / "step_00000008", model.state_dict(), fm_cfg, complete=False)
    out = tmp_path / "run"
    cases = {
        str(tmp_path / "missing"): "no such file or directory",
        str(half): rf"{half}.*incomplete or missing \(no COMPLETE marker\)",
        str(tmp_path): "not an export",
    }
    for path, msg in cases.items():
        with pytest.raises(ValueError, match=msg):
            plan_init_from(dfm_cfg(out, f"train.init_from={path}", UPSAMPLED), None)
    assert not out.exists()


@pytest.mark.parametrize(
    "change,tensor",
    [
        ("model.hidden_size=32", r"'patch_embed\.0\.weight'.*\(32, 192\).*\(64, 192\)"),
        ("model.depth=3", r"the source has 3 transformer blocks, the model 2 \(model.depth\)"),
        ("model.in_channels=16", r"'patch_embed\.0\.weight'.*\(64, 64\).*\(64, 192\)"),
        ("model.num_classes=5", r"'y_embedder\.weight'.*\(6, 64\).*\(9, 64\)"),
    ],
)
def test_shape_mismatches_are_refused_naming_tensor_and_shapes(tmp_path, change, tensor) -> None:
    export, _ = write_export(tmp_path, change)
    cfg = dfm_cfg(tmp_path / "run", f"train.init_from={export}", UPSAMPLED)
    with pytest.raises(ValueError, match=tensor):
        plan_init_from(cfg, None)
    assert not (tmp_path / "run").exists()


def test_partial_load_reinitialises_the_class_table_but_never_the_blocks(tmp_path) -> None:
    export, weights = write_export(tmp_path, "model.num_classes=5")
    out = tmp_path / "run"
    cfg = dfm_cfg(out, f"train.init_from={export}", UPSAMPLED, "train.init_strict=false")
    init = plan_init_from(cfg, None)
    assert init.summary.new == ["t_embedders.1.mlp.0.weight", "t_embedders.1.mlp.0.bias", "y_embedder.weight"]
    torch.manual_seed(0)
    fresh = build_model(cfg.model, cfg.dfm).state_dict()["y_embedder.weight"]
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dfm)
    init.apply(model, rank=0)
    assert torch.equal(model.state_dict()["y_embedder.weight"], fresh)
    assert torch.equal(model.state_dict()["blocks.0.fc1.weight"], weights["blocks.0.fc1.weight"])
    assert json.loads((out / SUMMARY_FILE).read_text())["new"]["parameters"] == 9 * 64 + 64 * 256 + 64
    export2, _ = write_export(tmp_path / "w", "model.hidden_size=32")
    with pytest.raises(ValueError, match="the transformer blocks must always load"):
        plan_init_from(dfm_cfg(out, f"train.init_from={export2}", UPSAMPLED, "train.init_strict=false"), None)


def test_resuming_run_ignores_init_from(tmp_path, caplog) -> None:
    cfg = dfm_cfg(tmp_path / "run", f"train.init_from={tmp_path / 'missing'}")
    assert plan_init_from(cfg, tmp_path / "run" / "checkpoints" / "step_00000010") is None
    assert "ignored" in caplog.text and "resuming from" in caplog.text


def test_key_map_loads_another_layout(tmp_path) -> None:
    """A DiT with a Conv3d patch embedder `x_embedder.proj`, `t_embedder` and `final_layer` names."""
    export, weights = write_export(tmp_path)
    foreign = {}
    for k, v in weights.items():
        k2 = k.replace("patch_embed.0.", "x_embedder.proj.").replace("t_embedders.0.", "t_embedder.")
        k2 = k2.replace("final_layers.0.", "final_layer.")
        foreign[k2] = v.reshape(64, 48, 1, 2, 2) if k2 == "x_embedder.proj.weight" else v
    rules_file = tmp_path / "map.json"
    rules_file.write_text(
        json.dumps(
            [
                [r"x_embedder\.proj\.weight", "patch_embed.0.weight", [64, -1]],
                [r"x_embedder\.proj\.bias", "patch_embed.0.bias"],
                [r"t_embedder\.(.*)", r"t_embedders.0.\1"],
                [r"final_layer\.(.*)", r"final_layers.0.\1"],
            ]
        )
    )
    mapped = apply_key_map(foreign, load_key_map(rules_file), "foreign")
    assert mapped.keys() == weights.keys() and all(torch.equal(mapped[k], weights[k]) for k in weights)
    uni = tmp_path / "foreign-universal"
    for k, v in foreign.items():
        (uni / "zero" / k).mkdir(parents=True)
        torch.save({"param": v}, uni / "zero" / k / "fp32.pt")
    base = [f"train.init_from={uni}", UPSAMPLED]
    with pytest.raises(ValueError, match=r"no 'patch_embed.<stage>.weight'.*train.init_key_map"):
        plan_init_from(dfm_cfg(tmp_path / "run", *base), None)
    init = plan_init_from(dfm_cfg(tmp_path / "run", *base, f"train.init_key_map={rules_file}"), None)
    assert len(init.summary.copied) == len(weights)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[r"x_embedder\.proj\.weight", "patch_embed.0.weight", [7, -1]]]))
    with pytest.raises(ValueError, match=r"cannot reshape 'x_embedder\.proj\.weight' \(64, 48, 1, 2, 2\) to \[7, -1\]"):
        apply_key_map(foreign, load_key_map(bad), "foreign")


def test_config_checks_and_the_k700_finetune_config() -> None:
    with pytest.raises(ValueError, match=r"key 'model.upsample_factors': expected one \(1, fh, fw\) per stage \(2\)"):
        load_config("tiny.yaml", ["model.upsample_factors=[[1, 2, 2]]"])
    with pytest.raises(ValueError, match=r"key 'model.upsample_factors\[0\]'.*\[1, 3, 2\]"):
        load_config("tiny.yaml", ["model.upsample_factors=[[1, 3, 2], [1, 1, 1]]"])
    with pytest.raises(ValueError, match="key 'train.init_key_map': given .* without train.init_from"):
        load_config("tiny.yaml", ["train.init_key_map=map.json"])
    cfg = load_config("k700-finetune.yaml")
    assert (cfg.optim.lr, cfg.optim.betas, cfg.optim.eps, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (
        1e-5,
        (0.9, 0.99),
        1e-8,
        2000,
        0.01,
    )
    assert cfg.model.name == "DiT3D-XL" and cfg.train.init_from and cfg.train.init_strict
    # the source (k700.yaml as flow matching) fits the fine-tune's coarse stage: checked on the meta device
    fm = single_stage(load_config("k700.yaml"))
    with torch.device("meta"):
        src = build_model(fm.model, fm.dfm).state_dict()
        dst = build_model(cfg.model, cfg.dfm).state_dict()
    _, summary = map_state(dst, src, "k700 FM")
    assert len(summary.copied) == len(src) and not summary.ignored


def test_init_keys_may_change_on_resume(tmp_path) -> None:
    old = config_to_dict(load_config("tiny.yaml"))
    new = config_to_dict(load_config("tiny.yaml", [f"train.init_from={tmp_path}", "train.init_strict=false"]))
    changes = compare_configs(old, new)  # no error: a resume ignores them
    assert len(changes) == 2 and all("train.init_" in c for c in changes)
