"""The engine's layout keeps its imports acyclic: no module of ``vance_provider.core`` reaches
itself again through the modules it imports.

The graph is read from the source (AST), not from a running import: every ``import`` counts,
at module level and inside functions alike. Imports under ``if TYPE_CHECKING:`` are left out:
they are read by type checkers only, never run. Importing a module first runs the packages
above it, so an edge to ``a.b.c`` is also an edge to ``a.b`` and ``a`` (except to the packages
the importer itself lives in, which are already running).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import vance_provider.core

CORE = Path(vance_provider.core.__file__).parent
ROOT = "vance_provider.core"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(CORE).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        found[".".join([ROOT, *parts])] = (path, is_pkg)
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, less the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _packages_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """Each module of the engine and the engine modules it imports, directly."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:  # ``from pkg import module`` imports that module
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in modules else source)
        own = _packages_of(name) | ({name} if is_pkg else set())
        for target in targets:
            for module in {target} | _packages_of(target):
                if module in modules and module != name and module not in own:
                    graph[name].add(module)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_engine_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 20  # the whole engine was read
    assert strongly_connected(graph) == []


def test_the_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_the_graph_sees_late_imports_and_skips_type_checking_ones() -> None:
    graph = import_graph()
    # the client's convenience methods need the batch, the reports and VisionCraft's calls ...
    assert {f"{ROOT}.batch.runner", f"{ROOT}.reports.credits"} <= graph[f"{ROOT}.client"]
    # ... which name the client only for type checkers
    assert f"{ROOT}.client" not in graph[f"{ROOT}.batch.runner"]
    assert f"{ROOT}.client" not in graph[f"{ROOT}.reports.credits"]
