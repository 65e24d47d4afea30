"""Import direction: data_pipeline -> dfm_video, never back; model files stay free of distributed code;
kernels import nothing from dfm_video; only dfm_video/train imports deepspeed."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _violations(folder: str, forbidden: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel.startswith(e) for e in exclude):
            continue
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                out.append(f"{rel} imports {name}")
    return out


@pytest.mark.parametrize(
    "folder,forbidden,exclude",
    [
        ("dfm_video", ("data_pipeline",), ()),
        ("dfm_video/models", ("deepspeed", "torch.distributed"), ()),
        ("dfm_video/dfm", ("deepspeed", "torch.distributed", "torch.nn.parallel"), ()),
        ("kernels", ("dfm_video", "data_pipeline"), ()),
        ("dfm_video", ("deepspeed",), ("dfm_video/train/",)),
    ],
)
def test_import_direction(folder, forbidden, exclude):
    assert _violations(folder, forbidden, exclude) == []


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    bad = tmp_path / "dfm_video" / "models"
    bad.mkdir(parents=True)
    (bad / "m.py").write_text("import torch.distributed as dist\nfrom deepspeed import init\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert len(_violations("dfm_video/models", ("deepspeed", "torch.distributed"))) == 2
