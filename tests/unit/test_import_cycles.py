"""No import cycles in the runtime package (runtime/tgstack), read from the source with ``ast``.

Every ``import`` counts wherever it is written: at module level, inside a function (a lazy
import is still a dependency, and a cycle hidden in a function is one refactoring away from
an ImportError), and under ``if TYPE_CHECKING:`` (what a module names in its types is what it
depends on; hiding a cycle there is how ``Any`` crept into signatures). Importing ``a.b.c``
also runs ``a/__init__`` and ``a/b/__init__``, so those count as well, except a module's own
ancestors (they are already being imported when it runs).

Two graphs must be acyclic: modules, and subpackages taken whole (``tgstack.gateway``,
``tgstack.poller`` … each one node beside the top-level modules ``tgstack.db``,
``tgstack.models`` …). The second catches layering cycles such as ``db`` importing a
``poller`` module while ``poller.service`` imports ``db``: no single module cycle, but the
data layer depending on the layer above it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
PACKAGE = "tgstack"

Graph = dict[str, set[str]]


def modules_of(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package ``__init__``) for every .py file of ``package``."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every dotted name an import statement in ``tree`` may load, absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path, package: str) -> Graph:
    """Module → the modules of ``package`` it imports (directly, or as a package it passes)."""
    modules = modules_of(root, package)
    graph: Graph = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own_ancestors = set(_ancestors(name))
        for imported in _imported_names(tree, name, is_package):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]  # `from pkg.mod import name`: pkg.mod
            if not target:
                continue
            for loaded in [*_ancestors(target), target]:
                if loaded != name and loaded not in own_ancestors and loaded in modules:
                    graph[name].add(loaded)
    return graph


def layer_graph(graph: Mapping[str, set[str]], package: str) -> Graph:
    """The graph with each subpackage of ``package`` folded into one node."""
    depth = package.count(".") + 2
    subpackages = {
        name
        for name in graph
        if name.count(".") == depth - 1 and any(other.startswith(name + ".") for other in graph)
    }

    def layer(name: str) -> str:
        top = ".".join(name.split(".")[:depth])
        return top if top in subpackages else name

    layers: Graph = {}
    for name, targets in graph.items():
        edges = layers.setdefault(layer(name), set())
        edges.update(layer(t) for t in targets if layer(t) != layer(name))
    return layers


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, …, a]``) per strongly connected component of two or more nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the runtime's depth is far below the limit
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle(graph, component) for component in components]


def _a_cycle(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """The shortest way from the component's first node back to itself (breadth first)."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for other in sorted(graph[node] & component):
                if other == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if other not in previous:
                    previous[other] = node
                    following.append(other)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def _report(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


def test_runtime_modules_import_each_other_without_cycles() -> None:
    found = cycles(import_graph(RUNTIME, PACKAGE))
    assert not found, f"import cycles between runtime modules:\n{_report(found)}"


def test_runtime_subpackages_import_each_other_without_cycles() -> None:
    found = cycles(layer_graph(import_graph(RUNTIME, PACKAGE), PACKAGE))
    assert not found, f"import cycles between runtime subpackages:\n{_report(found)}"


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def thing():\n    from pkg import a\n",
            "pkg/c.py": "import pkg.a\n",
        },
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_cycle_under_type_checking_and_relative_imports_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .b import B\n",
            "pkg/sub/b.py": "from . import c\n",
            "pkg/sub/c.py": "from ..sub.a import A\n",
        },
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [
        ["pkg.sub.a", "pkg.sub.b", "pkg.sub.c", "pkg.sub.a"]
    ]


def test_a_package_init_that_imports_its_importer_is_a_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low.py": "from pkg.sub.x import X\n",  # runs pkg/sub/__init__ first
            "pkg/sub/__init__.py": "from pkg.low import thing\n",
            "pkg/sub/x.py": "X = 1\n",
        },
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.low", "pkg.sub", "pkg.low"]]


def test_a_layer_cycle_without_a_module_cycle_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/db.py": "from pkg.poller.processing import Result\n",
            "pkg/poller/__init__.py": "",
            "pkg/poller/processing.py": "Result = 1\n",
            "pkg/poller/service.py": "from pkg.db import Database\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == []
    assert cycles(layer_graph(graph, "pkg")) == [["pkg.db", "pkg.poller", "pkg.db"]]
