"""Fixtures for the control-plane tests: more than one source per test, a scratch directory.

Everything lives under the session's test_root, so the shared teardown finds any leftover.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

SourceFactory = Callable[[], Path]


@pytest.fixture
def scratch(test_root: Path) -> Path:
    """A fresh directory, mode 0755, for files that are not sources (configs, logs)."""
    path = Path(tempfile.mkdtemp(prefix="scratch-", dir=test_root))
    path.chmod(0o755)
    return path


@pytest.fixture
def new_source(test_root: Path) -> SourceFactory:
    """Call it for each fresh empty source directory (mode 0755, owned by root) a test needs."""

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="source-", dir=test_root))
        path.chmod(0o755)
        return path

    return make
