"""Typed configs: YAML loading, dotted overrides, clear errors naming key and file, serialisation."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dfm_video.config import (
    CONFIG_DIR,
    Config,
    config_to_dict,
    load_config,
    require,
    resolve_config_path,
    save_config,
    single_stage,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_match_the_paper():
    cfg = load_config(None)
    assert cfg.dfm.num_stages == 2 and cfg.dfm.factors == [(1, 2, 2)]
    assert cfg.dfm.stage_probs == [0.9, 0.1]
    assert (cfg.dfm.current_loc, cfg.dfm.current_scale, cfg.dfm.earlier_loc, cfg.dfm.earlier_scale) == (
        0.0,
        1.0,
        1.5,
        1.0,
    )
    assert cfg.optim.betas == (0.9, 0.99) and cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.01
    assert cfg.sample.steps == [30, 10] and cfg.sample.tau == 0.9
    assert cfg.train.ema_decay == 0.9999 and cfg.model.class_dropout == 0.1


def test_yaml_and_overrides(tmp_path):
    p = _write(
        tmp_path,
        """
        model: {name: DiT3D-B, patch_size: [2, 2, 2]}
        dfm: {num_stages: 3, factors: [[2, 2, 2], [1, 2, 2]], stage_probs: [0.8, 0.15, 0.05]}
        optim: {lr: 1e-4}
        sample: {steps: [20, 10, 10], cfg_interval: [0.1, 0.9]}
        """,
    )
    cfg = load_config(p, ["optim.lr=2e-4", "train.steps=10", "model.qk_norm=false", "dfm.temporal_mode=uniform"])
    assert cfg.model.patch_size == (2, 2, 2) and cfg.dfm.factors == [(2, 2, 2), (1, 2, 2)]
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 10 and cfg.model.qk_norm is False and cfg.dfm.temporal_mode == "uniform"
    assert cfg.sample.cfg_interval == (0.1, 0.9)


@pytest.mark.parametrize(
    "text,match",
    [
        ("optim: {lrr: 1.0}", r"run\.yaml.*unknown key 'optim\.lrr'.*did you mean 'lr'"),
        ("optimizer: {lr: 1.0}", r"run\.yaml.*unknown key 'optimizer'"),
        ("optim: {lr: fast}", r"run\.yaml.*key 'optim\.lr': expected a number, got 'fast'"),
        ("train: {steps: 1.5}", r"key 'train\.steps': expected an integer"),
        ("model: {qk_norm: 1}", r"key 'model\.qk_norm': expected a boolean"),
        ("model: {attention: cuda}", r"key 'model\.attention': expected one of 'auto', 'sdpa'"),
        ("model: {patch_size: [1, 2]}", r"key 'model\.patch_size': expected a list of 3 values"),
        ("dfm: {factors: [[1, 2, 3]]}", r"key 'dfm\.factors\[0\]'"),
        ("dfm: {stage_probs: [0.5, 0.6]}", r"key 'dfm\.stage_probs'.*sum"),
        ("dfm: {num_stages: 3}", r"key 'dfm\.factors'"),
        ("sample: {tau: 0}", r"key 'sample\.tau'"),
        ("model: 3", r"key 'model': expected a mapping"),
        ("- a\n- b", r"run\.yaml: expected a mapping"),
        ("model: {name: [unclosed", r"run\.yaml: not valid YAML"),
    ],
)
def test_bad_files_name_key_and_file(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    "item,match",
    [
        ("train.lr=1", r"--set train\.lr=1: unknown key 'train\.lr'"),
        ("trian.steps=1", r"unknown key 'trian'.*did you mean 'train'"),
        ("train.steps", r"expected KEY=VALUE"),
        ("train.steps=ten", r"key 'train\.steps': expected an integer, got 'ten'"),
        ("model.name.x=1", r"unknown key 'model\.name'"),
    ],
)
def test_bad_overrides(item, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [item])


def test_required_values():
    cfg = load_config(None)
    with pytest.raises(ValueError, match=r"missing required value 'data\.shards'.*--set data\.shards="):
        require(cfg, "data.shards", source="configs/x.yaml")
    cfg = load_config(None, ["data.shards=/tmp/s"])
    require(cfg, "data.shards")


def test_resolved_config_round_trips_through_yaml_and_json(tmp_path):
    cfg = load_config(None, ["dfm.factors=[[2,2,2]]", "sample.cfg_interval=[0.2,0.8]", "optim.lr=3e-4"])
    for name in ("cfg.yaml", "cfg.json"):
        path = save_config(cfg, tmp_path / name)
        raw = json.loads(path.read_text()) if name.endswith("json") else yaml.safe_load(path.read_text())
        assert raw["dfm"]["factors"] == [[2, 2, 2]]
        again = load_config(path)
        assert again == cfg
    assert config_to_dict(Config())["model"]["patch_size"] == [1, 2, 2]


def test_config_names_resolve_under_configs_dir(tmp_path):
    with pytest.raises(ValueError, match="config file not found: 'no-such.yaml'"):
        resolve_config_path("no-such.yaml")
    shipped = sorted(CONFIG_DIR.rglob("*.yaml"))
    for path in shipped:  # every shipped config must load
        load_config(path)


def test_num_stages_follows_from_factors_and_a_stated_one_must_agree(tmp_path):
    three = _write(
        tmp_path,
        """
        dfm: {factors: [[1, 2, 2], [2, 2, 2]], stage_probs: [0.5, 0.3, 0.2]}
        sample: {steps: [4, 2, 1]}
        """,
    )
    assert load_config(three).dfm.num_stages == 3
    assert load_config(None, ["dfm.factors=[]", "dfm.stage_probs=[1.0]", "sample.steps=[9]"]).dfm.num_stages == 1
    # configs that state it (every run directory's config.yaml does) load, in either override order
    old = ["dfm.num_stages=1", "dfm.factors=[]", "dfm.stage_probs=[1.0]", "sample.steps=[9]"]
    assert load_config(None, old).dfm.num_stages == 1
    assert load_config(None, [old[1], old[0], *old[2:]]).dfm.num_stages == 1
    saved = save_config(load_config(three), tmp_path / "saved.yaml")
    assert yaml.safe_load(saved.read_text())["dfm"]["num_stages"] == 3 and load_config(saved).dfm.num_stages == 3
    with pytest.raises(ValueError, match=r"key 'dfm\.factors': 1 factors make 2 stages but dfm\.num_stages=3"):
        load_config(None, ["dfm.num_stages=3"])
    with pytest.raises(ValueError, match=r"2 factors make 3 stages but dfm\.num_stages=2"):
        load_config(None, ["dfm.factors=[[1,2,2],[1,2,2]]", "dfm.num_stages=2"])


def test_single_stage_is_the_flow_matching_baseline_in_code_and_on_the_command_line():
    cfg = load_config("demo.yaml")
    fm = single_stage(cfg)
    assert (fm.dfm.num_stages, fm.dfm.factors, fm.dfm.stage_probs, fm.sample.steps) == (1, [], [1.0], [40])
    assert cfg.dfm.num_stages == 2 and cfg.sample.steps == [30, 10]  # a copy
    validate(fm)
    assert config_to_dict(load_config("demo.yaml", ["dfm=single_stage"])) == config_to_dict(fm)
    # what the override list spelled out before the preset: the same config
    spelled = ["dfm.num_stages=1", "dfm.factors=[]", "dfm.stage_probs=[1.0]", "sample.steps=[40]"]
    assert config_to_dict(load_config("demo.yaml", spelled)) == config_to_dict(fm)
    assert load_config("tiny.yaml", ["dfm=single_stage", "sample.steps=[6]"]).sample.steps == [6]
    with pytest.raises(ValueError, match=r"--set dfm=two_stage: no preset 'two_stage' for section 'dfm'"):
        load_config(None, ["dfm=two_stage"])


def test_the_config_package_imports_without_yaml():
    code = (
        "import sys; sys.modules['yaml'] = None\n"
        "import dfm_video.config as c, dfm_video.models\n"
        "c.validate(c.single_stage(c.Config()))\n"
        "try:\n    c.load_config(None, ['train.lr=1'])\nexcept ImportError:\n    print('needs yaml')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "needs yaml", r.stderr[-2000:]
