"""The import graph of ``src/resflex``: every import points down the layers, and no module cycle.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, at module level or
inside a function or ``TYPE_CHECKING`` block: a lazy import is still a dependency), so the rule
holds without importing anything. The layers, lowest first (docs/architecture.md, "Layers"):

    base      errors, types, validation, compat, runtime    import only each other
    data      resflex.data.*                                 base
    models    resflex.models.*                               base          (not data: siblings)
    training  resflex.training.*                             base, data, models
    app       every other top-level module (build, train,    anything
              evaluate, predict, export, config, ...)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "resflex"

BASE = frozenset({"errors", "types", "validation", "compat", "runtime"})
RANK = {"base": 0, "data": 1, "models": 1, "training": 2, "app": 3}
#: module cycles a change in progress removes; each entry must still exist, so it is dropped when it goes
KNOWN_CYCLES: set[frozenset[str]] = set()


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in ("data", "models", "training"):
        return parts[1]
    if len(parts) == 2 and parts[1] in BASE:
        return "base"
    if len(parts) == 2 and parts[1] in ("data", "models", "training"):
        return parts[1]  # the package itself
    return "app"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The resflex modules ``path`` imports (``from resflex.data import x`` counts as ``resflex.data.x``
    when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t == "resflex" or t.startswith("resflex.")}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imports in sorted(graph.items()):
        for target in sorted(imports):
            low, high = layer(target), layer(module)
            sideways = {low, high} == {"data", "models"}
            if RANK[low] > RANK[high] or sideways:
                bad.append(f"{module} ({high}) imports {target} ({low})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    assert "resflex.data.datamodule" in graph and "resflex.train" in graph
    assert "resflex.data.schedule" in graph["resflex.data.datamodule"]
    assert "resflex.errors" in graph["resflex.validation"]
    assert layer("resflex.data.eval_sizes") == "data" and layer("resflex.types") == "base"
    assert layer("resflex.build") == "app" and layer("resflex.training.module") == "training"


def test_every_import_points_down_the_layers() -> None:
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(bad)


def test_no_module_cycles() -> None:
    found = set(cycles(import_graph()))
    assert found <= KNOWN_CYCLES, f"import cycles: {[sorted(c) for c in found - KNOWN_CYCLES]}"
    stale = KNOWN_CYCLES - found
    assert not stale, f"no longer cycles, drop them from KNOWN_CYCLES: {[sorted(c) for c in stale]}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"resflex.data.datamodule": {"resflex.training.eval_sizes"}}, "resflex.data.datamodule (data)"),
        ({"resflex.models.x": {"resflex.data.resolution"}}, "resflex.models.x (models)"),
        ({"resflex.errors": {"resflex.build"}}, "resflex.errors (base)"),
    ],
)
def test_the_rule_catches_an_upward_or_sideways_import(graph: dict[str, set[str]], expected: str) -> None:
    assert upward_imports(graph) and upward_imports(graph)[0].startswith(expected)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_every_module_is_named_in_the_architecture_doc() -> None:
    """docs/architecture.md is where a reader finds which module does what: a new module must be named
    there (in backticks, by file or module name), or the map silently stops covering the code."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    spans = re.findall(r"`([^`]*)`", doc)
    unnamed = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py"
        and not any(re.search(rf"(?<![\w.]){re.escape(path.stem)}(\.py)?\b", span) for span in spans)
    ]
    assert not unnamed, f"modules docs/architecture.md does not name: {unnamed}"
