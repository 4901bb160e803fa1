"""The layering rule: fusemount/core/ makes pure decisions, so it imports no os, pyfuse3 or trio.

Checked on the source (AST), not by importing, so a violation in a module nobody imports yet is
caught too. Also keeps core/ from reaching the same modules through the other layers
(fusemount.view, fusemount.host, ...). Never imports the modules it checks.
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
