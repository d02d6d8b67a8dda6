"""The package's import graph: no cycles, and the member processes never import the planner.

Every import counts, a function's too (it runs when the function does), except those under
`if TYPE_CHECKING:`, which never run. This is the package's own graph: a child started with `spawn`
also re-imports its parent's main module (`mp_rl.run` for a supervisor's children), whatever that imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mp_rl"
PLANNER = {"mp_rl.start.preflight", "mp_rl.start.budget", "mp_rl.start.footprint", "mp_rl.start.autotune"}
MEMBERS = ("mp_rl.system.entrypoints", "mp_rl.agent.actor", "mp_rl.agent.learner", "mp_rl.monitor.monitor")


def _modules() -> dict[str, Path]:
    return {".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
            for f in PACKAGE.rglob("*.py")}  # fmt: skip


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The package modules `tree` imports, skipping `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            found |= {m for n in node.orelse for m in _imports(n, known)}
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs if len(subs) == len(node.names) else {node.module} | subs
        found |= _imports(node, known)
    return found & known


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(ast.parse(f.read_text()), set(mods)) - {name} for name, f in mods.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 150  # the walk found the package's imports
    cycles = [c for m in sorted(graph) if (c := _cycle_from(graph, m))]
    assert not cycles, " | ".join(" -> ".join(c) for c in cycles[:3])


def test_member_processes_never_import_the_planner():
    graph = import_graph()
    for member in MEMBERS:
        assert not _reach(graph, member) & PLANNER, f"{member} imports {sorted(_reach(graph, member) & PLANNER)}"


def test_the_walk_sees_function_imports_and_skips_type_checking_ones():
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.x\ndef f():\n    from a import y\n"
    assert _imports(ast.parse(src), {"a", "a.x", "a.y"}) == {"a.y"}
