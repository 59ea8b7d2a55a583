"""The import graph: one way, from the edges to the shared types, and no torch in the daemon.

Imports are read from the source (ast), so a cycle hidden behind `TYPE_CHECKING` or a
function-level import counts as much as one at the top: either way the modules cannot
be understood apart.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "dataplane", "launcher", "scheduler", "gpu_executor", "cpu_executor")
PACKAGES += ("clients", "benchmarks")


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a package counts as its __init__)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_layers_import_one_way():
    """types <- core <- policies <- engine <- api; the executors never import the daemon."""
    order = ["scheduler.types", "scheduler.core", "scheduler.costs", "scheduler.policies"]
    order += ["scheduler.executors", "scheduler.engine", "scheduler.api"]
    rank = {layer: i for i, layer in enumerate(order)}

    def layer(m: str) -> str | None:
        return next((lay for lay in order if m == lay or m.startswith(lay + ".")), None)

    wrong = []
    for m, deps in import_graph().items():
        here = layer(m)
        for d in deps:
            there = layer(d)
            if here and there and rank[there] > rank[here]:
                wrong.append(f"{m} -> {d}")
            if m.split(".")[0] in ("gpu_executor", "cpu_executor", "dataplane") and (
                d.startswith("scheduler") or d.startswith("launcher")
            ):
                wrong.append(f"{m} -> {d}")
        if m.startswith("gpu_executor") and any(d.startswith("cpu_executor") for d in deps):
            wrong.append(f"{m} -> cpu_executor (the data plane is its own package)")
    assert wrong == []


def test_the_daemon_and_the_clis_import_no_torch():
    code = (
        "import sys, scheduler.api.daemon, launcher.cli, clients.apexctl; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
