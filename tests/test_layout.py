"""The layout reads as the data flows: production packages never load tooling, and the
package graph has no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = [
    "dynamo",
    "worklist_cache",
    "relay",
    "gateway",
    "hl7_ingest",
    "audit",
    "orchestration",
    "service",
]
TOOLING = {"loadtest", "tests", "devstack", "frontend_stub"}
PACKAGES = [*PRODUCTION, "loadtest", "devstack", "frontend_stub"]

_LOAD_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("package", PRODUCTION)
def test_a_production_package_loads_no_tooling(package: str) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, package],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert not TOOLING & set(loaded), f"{package} pulls in {sorted(TOOLING & set(loaded))}"


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
    return (found & set(PACKAGES)) - {package}


def test_the_package_graph_has_no_cycle() -> None:
    graph = {p: _imports(p) for p in PACKAGES}
    for p in PRODUCTION:
        assert not graph[p] & TOOLING, f"{p} imports {sorted(graph[p] & TOOLING)}"
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("package cycle: " + " -> ".join([*path, node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for p in PACKAGES:
        visit(p, [])
