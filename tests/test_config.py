"""Typed configs: YAML loading, dotted overrides, clear errors naming key and file, serialisation."""

import json
import textwrap

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
)


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
