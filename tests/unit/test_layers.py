"""The layering rules (issue 16 item 2): fusemount/core/ makes pure decisions, so it imports no
os, pyfuse3 or trio; the packages form the order core < host < control < view < daemon < cli,
no import runs back up that order, none forms a loop, and `client` imports only core.

Checked on the source (AST), not by importing, so a violation in a module nobody imports yet is
caught too, and imports under TYPE_CHECKING count. Also keeps core/ from reaching the same
modules through the other layers (fusemount.view, fusemount.host, ...). Never imports the
modules it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "fusemount"
CORE = PACKAGE_ROOT / "core"
FORBIDDEN = frozenset({"os", "pyfuse3", "trio"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module that source imports (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                if node.module:
                    found.add(f"{base}.{node.module}")
                else:  # `from . import x`: each x may be a module
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def _inside_core(name: str) -> bool:
    return name in ("fusemount", "fusemount.core") or name.startswith("fusemount.core.")


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    bad: list[str] = []
    for name in sorted(imported_modules(source, module, is_package)):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            bad.append(f"{module} imports {name}")
        elif top == "fusemount" and not _inside_core(name):
            bad.append(f"{module} imports {name}, outside core/")
    return bad


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_imports_no_os_pyfuse3_or_trio() -> None:
    files = _core_files()
    assert files, f"no modules found under {CORE}"
    bad = [
        v
        for path in files
        for v in violations(
            path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"
        )
    ]
    assert not bad, "core/ must stay pure:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import os", "fusemount.core.policy"),
        ("import os.path", "fusemount.core.policy"),
        ("from os import fspath", "fusemount.core.policy"),
        ("import trio as t", "fusemount.core.policy"),
        ("from pyfuse3 import FUSEError", "fusemount.core.policy"),
        ("def f():\n    import os\n", "fusemount.core.policy"),
        ("from ..host import backing", "fusemount.core.policy"),
        ("from fusemount.view.ops import Operations", "fusemount.core.policy"),
    ],
)
def test_layer_check_catches_forbidden_import(source: str, module: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(
    "source",
    [
        "import errno, enum",
        "from dataclasses import dataclass",
        "from .records import Caller",
        "from . import records",
        "from fusemount.core.records import Grant",
        "import shlex  # os-free stdlib is fine",
    ],
)
def test_layer_check_allows_pure_imports(source: str) -> None:
    assert violations(source, "fusemount.core.policy") == []


# The order, lowest first: a module may import its own layer and the ones before it.
LAYERS = ("core", "host", "control", "view", "daemon", "cli")
# Only these stay at the top of fusemount/: the package, `python -m fusemount`, the public client.
TOP_LEVEL = frozenset({"__init__.py", "__main__.py", "client.py"})
# What a top-level module may import (client is the public face: it shares only core's grammar
# and records with the daemon, so a program can use it without pyfuse3 or trio).
TOP_ALLOWED = {
    "fusemount": frozenset(),
    "fusemount.__main__": frozenset(LAYERS),
    "fusemount.client": frozenset({"core"}),
}

# Imports that run up the order today, each to be removed by the issue item named. The test
# fails once an entry no longer occurs, so the list only shrinks.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _all_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _internal_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The fusemount modules that module imports: `from pkg import mod` names mod itself."""
    found: set[str] = set()
    for name in imported_modules(path.read_text(encoding="utf-8"), module,
                                 path.name == "__init__.py"):
        if name.split(".")[0] == "fusemount":
            found.add(name)
    # imported_modules gives `from fusemount.host import backing` as fusemount.host: add the
    # submodules such a statement names, so the edges point at the modules that hold the code.
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in known)
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    modules = _all_modules()
    known = set(modules)
    return {module: _internal_imports(module, path, known) - {module}
            for module, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def up_layer_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every (importer, imported) pair where the import runs back up the order."""
    bad: set[tuple[str, str]] = set()
    for module, imports in graph.items():
        layer = _layer(module)
        for target in imports:
            target_layer = _layer(target)
            if target_layer is None:  # the package root or a top-level module
                if target != "fusemount" and layer != "cli":
                    bad.add((module, target))  # only the command line uses the client
                continue
            if layer is None:
                if target_layer not in TOP_ALLOWED.get(module, frozenset()):
                    bad.add((module, target))
            elif LAYERS.index(target_layer) > LAYERS.index(layer):
                bad.add((module, target))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_only_the_public_modules_stay_at_the_top() -> None:
    loose = sorted(p.name for p in PACKAGE_ROOT.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"modules at the top of fusemount/ belong in a layer: {loose}"
    packages = sorted(p.name for p in PACKAGE_ROOT.iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)


def test_no_import_runs_back_up_a_layer() -> None:
    bad = up_layer_imports(_graph())
    unexpected = sorted(bad - set(ALLOWED_UPWARD))
    assert not unexpected, "imports running up core < host < control < view < daemon < cli:\n" + \
        "\n".join(f"{a} imports {b}" for a, b in unexpected)
    stale = sorted(set(ALLOWED_UPWARD) - bad)
    assert not stale, f"allow-list entries that no longer occur, remove them: {stale}"


def test_client_imports_only_core() -> None:
    imports = _graph()["fusemount.client"]
    assert all(_layer(name) == "core" for name in imports), sorted(imports)


def test_no_import_loops() -> None:
    assert cycles(_graph()) == []


@pytest.mark.parametrize(
    ("graph", "bad"),
    [
        ({"fusemount.host.a": {"fusemount.view.b"}}, {("fusemount.host.a", "fusemount.view.b")}),
        ({"fusemount.core.a": {"fusemount.host.b"}}, {("fusemount.core.a", "fusemount.host.b")}),
        ({"fusemount.client": {"fusemount.host.b"}}, {("fusemount.client", "fusemount.host.b")}),
        ({"fusemount.view.a": {"fusemount.client"}}, {("fusemount.view.a", "fusemount.client")}),
        ({"fusemount.cli.a": {"fusemount.client", "fusemount.daemon.b"}}, set()),
        ({"fusemount.view.a": {"fusemount.control.b", "fusemount", "fusemount.view.c"}}, set()),
    ],
)
def test_layer_order_check(graph: dict[str, set[str]], bad: set[tuple[str, str]]) -> None:
    assert up_layer_imports(graph) == bad


def test_cycle_check_finds_loops() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
