"""No import circles, and no project import hidden where a circle could hide: inside a function or
under `if TYPE_CHECKING:` (a late import is a circle in hiding; the shared piece moves down a layer).

Checked for the folders listed in FOLDERS. Third-party imports may stay lazy (deepspeed, triton,
av, ray, ...): only imports of this project's packages count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("dfm_video", "data_pipeline", "kernels")
FOLDERS = ("data_pipeline", "dfm_video", "kernels")


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
        return []
    return [n for n in names if n.split(".")[0] in PROJECT]


def late_imports(path: Path, root: Path) -> list[str]:
    """`file:line module` for each project import inside a function or under `if TYPE_CHECKING:`."""
    out: list[str] = []

    def visit(node: ast.AST, hidden: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names = _project_imports(child)
            if hidden and names:
                out.append(f"{path.relative_to(root).as_posix()}:{child.lineno} {names[0]}")
            is_func = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            is_tc = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            visit(child, hidden or is_func or is_tc)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return out


def import_graph(root: Path, folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> project modules it imports (top level), for every module under `folders`."""
    files = {_module_name(p, root): p for f in folders for p in sorted((root / f).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _project_imports(node):
                while name and name not in files:  # `from pkg.mod import fn` -> pkg.mod
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + "."):  # a package's own __init__ is no edge
                    deps.add(name)
        graph[mod] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_late_project_imports(folder: str) -> None:
    assert [hit for p in sorted((ROOT / folder).rglob("*.py")) for hit in late_imports(p, ROOT)] == []


def test_no_import_circles() -> None:
    assert circles(import_graph(ROOT, FOLDERS)) == []


def test_the_checks_catch_a_circle_and_a_late_import(tmp_path: Path) -> None:
    pkg = tmp_path / "data_pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from data_pipeline.b import f\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dfm_video.config import Config\n"
        "def f():\n    from data_pipeline.a import g\n    import json\n"
    )
    assert circles(import_graph(tmp_path, ("data_pipeline",))) == [["data_pipeline.a", "data_pipeline.b"]]
    assert late_imports(pkg / "b.py", tmp_path) == [
        "data_pipeline/b.py:3 dfm_video.config",
        "data_pipeline/b.py:5 data_pipeline.a",
    ]
