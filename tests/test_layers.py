"""The shape of the code, checked: the import contracts in pyproject.toml, and no import cycles.

Both read the static import graph (grimp, import-linter's engine), which counts every import:
module level, inside functions (lazy) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from pathlib import Path

import grimp
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    """The layers of adapterhub/, no server/TUI imports in the library, server and TUI apart."""
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_in_the_library() -> None:
    graph = grimp.build_graph("adapterhub", cache_dir=None)
    cycles = _cycles(graph, set(graph.modules))
    chains = []
    for first, *rest in cycles:  # one actual cycle per component: first -> ... -> back -> first
        back = next(m for m in rest if first in graph.find_modules_directly_imported_by(m))
        chains.append(" -> ".join([*graph.find_shortest_chain(importer=first, imported=back), first]))
    assert not cycles, "import cycles:\n" + "\n".join(chains)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e")):
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph, set(graph.modules)) == [["p.a", "p.b", "p.c"]]
