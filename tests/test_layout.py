"""The package's layout: no two trainer modules import each other at import time, directly or
around a loop (an import cycle works or fails depending on which module is imported first)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_imports() -> dict[str, set[str]]:
    """Each trainer module -> the trainer modules its top-level statements import. Imports inside
    functions run later, on first use, and are how a module leans on another lazily: not counted."""
    paths = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (SRC / "trainer").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from a import b` runs a, and a.b when b is a module
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                # importing a.b.c runs a, a.b and a.b.c; a module's own packages are already running
                deps |= {
                    ".".join(parts[:i])
                    for i in range(1, len(parts) + 1)
                    if ".".join(parts[:i]) in paths and not f"{name}.".startswith(".".join(parts[:i]) + ".")
                }
        graph[name] = deps - {name}
    return graph


def test_no_import_cycle_among_trainer_modules() -> None:
    graph = module_imports()
    assert "trainer.resilience.guard" in graph and "trainer.config.loading" in graph  # the walk found them
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        raise AssertionError(f"import cycle (each imports the next): {' -> '.join(reversed(e.args[1]))}") from None
