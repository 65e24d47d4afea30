"""Every `--config` / `--set` written in README.md and docs/*.md parses against the schema: the
config resolves (a path from the checkout, or a name under configs/, as on a head node), every
override names a real key with a value of the right type, and the result validates."""

import re
import shlex
from pathlib import Path

import pytest

from dfm_video.config import load_config
from dfm_video.config.loader import apply_override

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Placeholders in prose ("--set section.key=value"), not commands.
PLACEHOLDERS = {"section.key=value", "a.b=value", "key=value", "KEY=VALUE"}


def _commands(text: str) -> list[str]:
    """Shell commands in fenced blocks (continuation lines joined) and inline `code` spans."""
    out = []
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # shell blocks: every line; other blocks (a file tree, YAML): lines that name a config
            if "--config" in line or ("--set" in line and lang in ("bash", "sh", "console")):
                out.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += [span for span in re.findall(r"`([^`\n]+)`", prose) if "--config" in span or "--set" in span]
    return out


def _parse(command: str) -> tuple[str | None, list[str]]:
    tokens = shlex.split(command, comments=True)
    config, sets = None, []
    for flag, value in zip(tokens, tokens[1:]):
        if flag == "--config":
            config = value
        elif flag == "--set" and value not in PLACEHOLDERS:
            sets.append(value)
    return config, sets


def _cases() -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(ROOT)}: {cmd.strip()}", cmd) for doc in DOCS for cmd in _commands(doc.read_text())]


CASES = _cases()


def test_the_docs_have_commands_to_check():
    assert sum("--config" in c for _, c in CASES) >= 10


@pytest.mark.parametrize("command", [c for _, c in CASES], ids=[i[:90] for i, _ in CASES])
def test_documented_config_and_overrides_parse(command):
    config, sets = _parse(command)
    if config is not None:
        # Cluster commands run where the checkout's configs/ is the project's; names resolve there.
        load_config(config, sets)
    else:
        cfg = load_config(None)
        for item in sets:
            cfg = apply_override(cfg, item)


def test_the_checker_catches_a_bad_key_and_an_unquoted_glob_mistake():
    with pytest.raises(ValueError, match="unknown key 'train.lr'"):
        load_config("k700.yaml", _parse("train.py --config k700.yaml --set train.lr=2e-4")[1])
    with pytest.raises(ValueError, match="config file not found"):
        load_config(_parse("x --config ~/nowhere/k700.yaml")[0])
