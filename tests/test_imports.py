"""Import structure: one direction of dependency through zoo/ and exporters/, lazy imports included.

    python -m pytest tests/test_imports.py -s      # prints the layer order with its modules

Each layer may import the layers below it and its own, never one above; and no
import cycle exists anywhere, counting imports inside functions and under
``if TYPE_CHECKING:`` (a lazy import still ties two modules together: it only
moves the failure from import time to call time).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module belongs to the first layer one of whose prefixes it starts with
# ("zoo" alone, the public API in zoo/__init__.py, is matched last and exactly).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("plain values", ("zoo.spec", "zoo.errors", "zoo.checks", "zoo.versions")),
    ("files and schemas", ("zoo.artifact", "zoo.manifest", "zoo.registry", "zoo.folders")),
    ("data", ("zoo.data",)),
    ("tasks", ("zoo.tasks",)),
    ("sources", ("zoo.sources", "zoo.resolver", "zoo.create")),
    ("runtime", ("zoo.runtime",)),
    ("train, exporters", ("zoo.train", "exporters")),
    ("lightning", ("zoo.lightning",)),
    ("entry points", ("zoo.cli", "zoo.serve", "zoo.__main__", "zoo")),
)


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in (root / package.replace(".", "/")).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    return modules


def module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """{module: modules of ``packages`` it imports}, every import statement anywhere in the file."""
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(node, package, modules):
                if target != name:
                    graph[name].add(target)
    return graph


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from . import x / from ..y import z
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        # "from zoo.cli import export" names a module; "from zoo.spec import ModelSpec" the module it is in
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    else:
        return []
    found = []
    for target in names:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target:
            found.append(target)
    return found


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int:
    for index, (_, prefixes) in enumerate(layers):
        if any(module == p or (module.startswith(p + ".") and p != "zoo") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_imports.py")


def upward_imports(graph: dict[str, set[str]], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Every import of a module in a higher layer, as 'a (layer) -> b (layer)'."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target, layers) > layer_of(module, layers):
                found.append(f"{module} ({layers[layer_of(module, layers)][0]}) -> "
                             f"{target} ({layers[layer_of(target, layers)][0]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_layers_import_downward_only_and_form_no_cycle():
    modules = module_files(ROOT, ("zoo", "exporters"))
    graph = module_graph(ROOT, ("zoo", "exporters"))
    by_layer: dict[int, list[str]] = defaultdict(list)
    for module in modules:
        by_layer[layer_of(module)].append(module)
    print("\nlayer order, top first (each may import only the ones below it):")
    for index in reversed(range(len(LAYERS))):
        print(f"  {index} {LAYERS[index][0]:18} {len(by_layer[index]):3} modules: {', '.join(LAYERS[index][1])}")
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def test_the_torch_free_layers_import_no_training_code():
    """What the runtime loads (tasks, data readers, runtime) never names zoo.train or exporters at all."""
    graph = module_graph(ROOT, ("zoo", "exporters"))
    low = [m for m in graph if layer_of(m) <= layer_of("zoo.runtime")]
    assert [f"{m} -> {t}" for m in low for t in graph[m] if t.startswith(("zoo.train", "exporters"))] == []


def lightning_importers(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Modules outside zoo.lightning that import it or the lightning package itself (an optional extra)."""
    modules = module_files(root, packages)
    found = []
    for name, path in modules.items():
        if name.startswith("zoo.lightning"):
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            found += [f"{name} -> {t}" for t in _targets(node, package, modules) if t.startswith("zoo.lightning")]
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{name} -> {n}" for n in names if n.split(".")[0] in ("lightning", "pytorch_lightning")]
    return sorted(found)


def test_only_zoo_lightning_imports_lightning():
    assert lightning_importers(ROOT, ("zoo", "exporters")) == []


# ---------------------------------------------------------------- the checks catch what they are for


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


PLANTED_LAYERS = (("low", ("pkg.low",)), ("high", ("pkg.high",)))


def test_a_planted_lazy_back_import_is_an_upward_import_and_a_cycle(tmp_path):
    root = _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/high.py": "from pkg.low import thing\n",
        "pkg/low.py": "def thing():\n    from pkg import high\n",  # lazy: found all the same
    })
    graph = module_graph(root, ("pkg",))
    assert upward_imports(graph, PLANTED_LAYERS) == ["pkg.low (low) -> pkg.high (high)"]
    assert cycles(graph) == [["pkg.high", "pkg.low"]]


def test_type_checking_and_relative_imports_count(tmp_path):
    root = _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/high.py": "import pkg.low\n",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import Thing\n",
    })
    graph = module_graph(root, ("pkg",))
    assert upward_imports(graph, PLANTED_LAYERS) == ["pkg.low (low) -> pkg.high (high)"]
    assert cycles(graph) == [["pkg.high", "pkg.low"]]


def test_downward_imports_pass(tmp_path):
    root = _plant(tmp_path, {"pkg/__init__.py": "", "pkg/high.py": "from pkg import low\n", "pkg/low.py": "X = 1\n"})
    graph = module_graph(root, ("pkg",))
    assert upward_imports(graph, PLANTED_LAYERS) == [] and cycles(graph) == []


def test_a_module_outside_every_layer_is_named():
    with pytest.raises(AssertionError, match="zoo_extra.thing is in no layer"):
        layer_of("zoo_extra.thing")


def test_a_planted_lightning_import_outside_zoo_lightning_is_named(tmp_path):
    root = _plant(tmp_path, {
        "zoo/__init__.py": "", "zoo/lightning/__init__.py": "import lightning.pytorch\n",
        "zoo/cli.py": "from zoo.lightning import ZooModule\n", "zoo/train.py": "from lightning import Trainer\n",
    })
    assert lightning_importers(root, ("zoo",)) == ["zoo.cli -> zoo.lightning", "zoo.train -> lightning"]
