"""Import structure: no module-level import cycle anywhere in zoo/ and exporters/, and no cycle at
all (lazy imports included) inside the packages whose layering is strict: zoo.train, zoo.cli, exporters.

The task layer is the one deliberate exception to the strict rule: zoo.tasks is a plug-in layer that
runtime, sources and the manifest look tasks up in (get_task, lazily), while task modules call back
into runtime preprocessing and sources. Module-level imports there still form no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STRICT = ("zoo.train", "zoo.cli", "exporters")


def module_graph(root: Path, packages: tuple[str, ...], top_level_only: bool) -> dict[str, set[str]]:
    """{module: modules of ``packages`` it imports}; with ``top_level_only`` only imports that run at import
    time (function bodies and ``if TYPE_CHECKING:`` blocks left out)."""
    modules = {}
    for package in packages:
        for path in (root / package.replace(".", "/")).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = [n for n in tree.body if not isinstance(n, ast.If)] if top_level_only else ast.walk(tree)
        for node in nodes:
            for target in _targets(node, name, modules):
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _targets(node: ast.AST, name: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        # "from zoo.cli import export" names a module; "from zoo.spec import ModelSpec" names the module it is in
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names]
    return []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_level_import_cycle():
    assert cycles(module_graph(ROOT, ("zoo", "exporters"), top_level_only=True)) == []


@pytest.mark.parametrize("package", STRICT)
def test_no_import_cycle_at_all_inside_strict_packages(package):
    assert cycles(module_graph(ROOT, (package,), top_level_only=False)) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_a_planted_lazy_cycle_is_found_and_a_module_level_one_too(tmp_path):
    root = _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from pkg import a\n",  # lazy: only the full graph sees it
        "pkg/c.py": "import pkg.d\n",
        "pkg/d.py": "from pkg import c\n",
    })
    assert sorted(cycles(module_graph(root, ("pkg",), top_level_only=False))) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d"]]
    assert cycles(module_graph(root, ("pkg",), top_level_only=True)) == [["pkg.c", "pkg.d"]]


def test_type_checking_imports_do_not_count_as_module_level(tmp_path):
    root = _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "pkg/b.py": "from pkg.a import TYPE_CHECKING\n",
    })
    assert cycles(module_graph(root, ("pkg",), top_level_only=True)) == []
