"""Config composition: `base:` names another config file and the file states only what differs."""

from pathlib import Path

import pytest

from dfm_video.config import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "tests" / "fixtures" / "configs_full"


@pytest.mark.parametrize("name", ["k700-long.yaml", "imagenet512.yaml", "preprocess/k700-long.yaml"])
def test_shipped_configs_with_a_base_resolve_to_their_full_versions(name):
    # The fixtures are the complete files these configs replaced: composition changes no value.
    assert "base:" in (ROOT / "configs" / name).read_text()
    new = config_to_dict(load_config(ROOT / "configs" / name))
    old = config_to_dict(load_config(FULL / name))
    assert new == old


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_merges_mappings_and_replaces_lists(tmp_path):
    _write(tmp_path / "a.yaml", "name: a\noptim: {lr: 0.5, betas: [0.1, 0.2]}\ndfm: {stage_probs: [0.9, 0.1]}\n")
    _write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\nname: b\noptim: {betas: [0.3, 0.4]}\n")
    c = _write(tmp_path / "sub" / "c.yaml", "base: b.yaml\noptim: {weight_decay: 0.25}\n")
    cfg = load_config(c)
    assert cfg.name == "b"
    assert cfg.optim.lr == 0.5 and cfg.optim.weight_decay == 0.25
    assert tuple(cfg.optim.betas) == (0.3, 0.4)
    assert "base" not in config_to_dict(cfg)


def test_base_cycle_is_an_error_naming_the_files(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    b = _write(tmp_path / "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(ValueError, match=r"cycle.*b\.yaml -> .*a\.yaml -> .*b\.yaml"):
        load_config(b)


def test_missing_base_is_an_error_naming_the_referring_file(tmp_path):
    c = _write(tmp_path / "c.yaml", "base: nowhere.yaml\nname: c\n")
    with pytest.raises(ValueError, match=r"c\.yaml: key 'base': config file not found: 'nowhere\.yaml'"):
        load_config(c)


def test_bad_key_in_a_derived_file_is_still_refused(tmp_path):
    _write(tmp_path / "a.yaml", "name: a\n")
    c = _write(tmp_path / "c.yaml", "base: a.yaml\noptim: {lrr: 1.0}\n")
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        load_config(c)
