"""Packaging: LICENSE, CITATION.cff, dependency ranges with the tested set in constraints.txt, the
optional decord (PyAV where it is absent), and the extras the README's commands need."""

import re
import tomllib
from pathlib import Path

from dfm_video.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_decord_absent_names_pyav_in_the_config_and_logs_it(monkeypatch, caplog):
    import importlib.util

    from data_pipeline import decode

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
