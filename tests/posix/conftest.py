"""Fixtures of the posix suite: one view per test module, one fresh subtree per test.

Job: start one daemon per module (startup is cheap, but a hundred of them are not) and, for
each test, a pair of empty directories: `native`, a plain directory, and `view_dir`, the root
of a subtree attached for this test only, whose backing directory is `backing`. Afterwards
the subtree is detached, and at module end the daemon is stopped; a daemon that logged a
traceback, WARNING or ERROR, died, or left its mount behind fails the module.
Never: share a directory between two tests, or touch the view's contents in teardown beyond
one detach through the control file.
Serves SPEC 3 (the posix suite runs on a plain directory and on the view).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle, new_view, teardown_problems
from tests.support.dirs import fresh_dir
from tests.support.pairs import Pair, attach_pair, detach_pair

# Cases run on VIEW/NAME itself, whose attributes are the source root's only under hidden
# names (SPEC 3); in the default gate mode VIEW/NAME shows its gate (tested in
# tests/permissions/test_gate.py), so the cases that inspect it are compared in hidden mode
# only (test_differential.ROOT_ATTRIBUTE_CASES). Everything below VIEW/NAME is alike.
MODE_CONFIG = {"hidden": "[access]\nhide_names = true\n", "gate": ""}


@pytest.fixture(scope="module", params=sorted(MODE_CONFIG))
def posix_mode(request: pytest.FixtureRequest) -> str:
    """The SPEC 5 mode the module's view runs in: every posix test runs in both."""
    mode: str = request.param
    return mode


@pytest.fixture(scope="module")
def posix_view(test_root: Path, posix_mode: str) -> Iterator[ViewHandle]:
    """A live view in posix_mode, shared by the tests of one module."""
    handle = new_view(test_root, "posix-view-")
    try:
        handle.daemon.start(handle.path, MODE_CONFIG[posix_mode], handle.state)
        yield handle
    finally:
        problems = teardown_problems(handle)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def pair(posix_view: ViewHandle, source: Path) -> Iterator[Pair]:
    """Two empty directories for one test: a plain one and a freshly attached subtree."""
    made = attach_pair(posix_view, source, "posix")
    yield made
    detach_pair(posix_view, made)


@pytest.fixture(scope="module")
def module_pair(posix_view: ViewHandle, test_root: Path) -> Iterator[Pair]:
    """Like pair, but shared by a module (for hypothesis, whose examples cannot take
    function-scoped fixtures); each example works in its own fresh subdirectory."""
    made = attach_pair(posix_view, fresh_dir(test_root, "posix-pair-"), "posix")
    yield made
    detach_pair(posix_view, made)
