"""Import direction: data_pipeline -> dfm_video, never back; model files stay free of distributed code;
kernels import nothing from dfm_video; only dfm_video/train imports deepspeed; sampling never imports
training and nothing but tests imports the sampling CLI; evaluation sees sampling's public surface
only; no project import inside a function (where an import circle would hide)."""

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


PROJECT = ("dfm_video", "data_pipeline", "kernels")
#: Folders of product code whose imports the rules below scan (tests/ may import anything).
PRODUCT = ("dfm_video", "data_pipeline", "kernels", "benchmarks", "scripts")
SAMPLING = "dfm_video.sampling"


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every import: `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _files(*where: str) -> list[Path]:
    paths = []
    for w in where:
        p = ROOT / w
        paths += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return paths


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def _scan(where: tuple[str, ...], bad) -> list[str]:
    """One `file:line imports name` per import line whose names include one `bad(name)` accepts."""
    out = {}
    for p in _files(*where):
        for line, name in _imported(p):
            key = f"{p.relative_to(ROOT).as_posix()}:{line}"
            if bad(name) and key not in out:
                out[key] = f"{key} imports {name}"
    return list(out.values())


def sampling_imports_train() -> list[str]:
    return _scan(("dfm_video/sampling", "dfm_video/sample.py"), lambda n: _under(n, "dfm_video.train"))


def sample_cli_importers() -> list[str]:
    return _scan(tuple(f for f in PRODUCT if (ROOT / f).exists()), lambda n: _under(n, "dfm_video.sample"))


def sampling_internals_in_eval() -> list[str]:
    """Imports of a sampling submodule (`dfm_video.sampling.plan`, `from dfm_video.sampling import plan`)."""
    folder = ROOT / "dfm_video" / "sampling"
    submodules = {f"{SAMPLING}.{p.stem}" for p in folder.glob("*.py")} | {
        f"{SAMPLING}.{p.name}" for p in folder.iterdir() if p.is_dir()
    }
    return _scan(("dfm_video/eval", "dfm_video/evaluate.py"), lambda n: any(_under(n, m) for m in submodules))


def late_imports(*where: str) -> list[str]:
    """Project imports (or relative ones) inside a function or method body."""
    out = []
    for path in _files(*where):
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." if node.level else node.module or ""]
                for name in names:
                    if name == "." or name.split(".")[0] in PROJECT:
                        out.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {fn.name}() imports {name}")
    return sorted(set(out))


def test_sampling_never_imports_training():
    assert sampling_imports_train() == []


def test_only_tests_import_the_sample_cli():
    assert sample_cli_importers() == []


def test_evaluation_uses_only_the_sampling_package_surface():
    assert sampling_internals_in_eval() == []


def test_no_late_project_imports_in_sampling_and_evaluation():
    assert (
        late_imports(
            "dfm_video/sampling",
            "dfm_video/sample.py",
            "dfm_video/evaluate.py",
            "dfm_video/eval",
            "dfm_video/demo",
            "dfm_video/checkpoints.py",
        )
        == []
    )


def test_no_late_project_imports_anywhere():
    assert late_imports(*PROJECT) == []


def test_new_checkers_catch_violations(tmp_path, monkeypatch):
    for rel, text in {
        "dfm_video/sampling/runner.py": "from dfm_video.train.export import export_weights\n",
        "dfm_video/sampling/plan.py": "",
        "dfm_video/sampling/launch.py": "",
        "dfm_video/sample.py": "import dfm_video.train.checkpoint\n",
        "dfm_video/train/export.py": "def main():\n    from dfm_video.sample import load_generator\n",
        "dfm_video/demo/report.py": "from dfm_video import sample\n",
        "dfm_video/evaluate.py": "from dfm_video.sampling import Launch, plan\n",
        "dfm_video/eval/extract.py": "from dfm_video.sampling.launch import Launch\n",
        "dfm_video/eval/videos.py": "from dfm_video.sampling import SAMPLING_RECORD\n",
        "kernels/op.py": "class F:\n    def forward(self):\n        from . import ref\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert len(sampling_imports_train()) == 2
    assert [v.split(":")[0] for v in sample_cli_importers()] == [
        "dfm_video/demo/report.py",
        "dfm_video/train/export.py",
    ]
    assert sorted(v.split(" imports ")[1] for v in sampling_internals_in_eval()) == [
        "dfm_video.sampling.launch",
        "dfm_video.sampling.plan",
    ]
    assert [v.split(":")[0] for v in late_imports(*PROJECT)] == ["dfm_video/train/export.py", "kernels/op.py"]
