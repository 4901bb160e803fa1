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

import errno
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, ViewHandle, problems_in_log

_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Pair:
    """native: a plain directory; view_dir: VIEW/name, backed by backing."""

    native: Path
    view_dir: Path
    backing: Path
    name: str


def _fresh_dir(parent: Path, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


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
    workdir = _fresh_dir(test_root, "posix-view-")
    path = workdir / "mnt"
    path.mkdir(mode=0o755)
    daemon = Daemon(workdir)
    handle = ViewHandle(path, daemon.state, daemon, workdir)
    problems: list[str] = []
    try:
        daemon.start(path, MODE_CONFIG[posix_mode], handle.state)
        yield handle
    finally:
        problems += daemon.cleanup().problems()
        bad = problems_in_log(daemon.stderr_text())
        if bad:
            problems.append("daemon logged problems:\n  " + "\n  ".join(bad)
                            + f"\n--- daemon output ---\n{daemon.stderr_text()}")
    if problems:
        pytest.fail(f"{path}: " + "\n".join(problems), pytrace=False)


def attach_pair(view: ViewHandle, parent: Path) -> Pair:
    """Make parent/native and parent/backing, and attach backing as a new subtree."""
    native = parent / "native"
    backing = parent / "backing"
    native.mkdir(mode=0o755)
    backing.mkdir(mode=0o755)
    native.chmod(0o755)
    backing.chmod(0o755)
    name = f"posix{next(_names)}"
    view.ok(f"attach {name} {backing}")
    return Pair(native, view.path / name, backing, name)


def detach_pair(view: ViewHandle, pair: Pair) -> None:
    """Detach the pair's subtree; a case that left a file open gets a forced detach and a
    failure, because every case must close what it opened."""
    reply = view.ctl(f"detach {pair.name}")
    if reply.errno == errno.EBUSY:
        view.ok(f"detach {pair.name} force")
        pytest.fail(f"{pair.name}: files were still open under the subtree after the test")
    assert reply.errno is None, reply.describe(f"detach {pair.name}")


@pytest.fixture
def pair(posix_view: ViewHandle, source: Path) -> Iterator[Pair]:
    """Two empty directories for one test: a plain one and a freshly attached subtree."""
    made = attach_pair(posix_view, source)
    yield made
    detach_pair(posix_view, made)


@pytest.fixture(scope="module")
def module_pair(posix_view: ViewHandle, test_root: Path) -> Iterator[Pair]:
    """Like pair, but shared by a module (for hypothesis, whose examples cannot take
    function-scoped fixtures); each example works in its own fresh subdirectory."""
    made = attach_pair(posix_view, _fresh_dir(test_root, "posix-pair-"))
    yield made
    detach_pair(posix_view, made)
