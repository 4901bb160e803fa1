"""Fixtures every suite shares: a world-traversable scratch root, sources, views, test users.

Job: hand tests live views (a daemon subprocess each) and real unprivileged users, and after each
test prove that nothing was left mounted or running and that the daemon logged no traceback,
WARNING or ERROR (unless the test is marked daemon_log_ok). Never: let a teardown step raise
before the later ones ran, or delete a directory tree that still has a mount inside it (that
would delete through the view into its sources).
Serves the test side of SPEC 2 (clean stop) and SPEC 5 (real users).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from fusemount.host.daemonfiles import DEFAULT_LOG_DIR, DEFAULT_STATE_DIR, escape_path
from tests.support.daemon import (
    VIEW_FSTYPE,
    ViewFactory,
    ViewHandle,
    lazy_unmount,
    mounts_under,
    new_view,
    teardown_problems,
)
from tests.support.dirs import SourceFactory, fresh_dir
from tests.support.users import UserPool, Users

# Session roots made by this process, for the last check in pytest_sessionfinish.
_SESSION_ROOTS: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daemon_log_ok: the daemon may log tracebacks, WARNING or ERROR in this test"
    )
    config.addinivalue_line("markers", "needs_root: skipped unless the tests run as root")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_root") is not None and os.geteuid() != 0:
        pytest.skip("needs root")


def _forget_default_files(root: Path) -> None:
    """Remove the per-view default files (state, lock, log, audit) that detached daemons on
    views under root made in /var/lib/fusemount and /var/log/fusemount (SPEC 8)."""
    prefix = escape_path(str(root)) + "-"
    for directory in (DEFAULT_STATE_DIR, DEFAULT_LOG_DIR):
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))


def _release_root(root: Path) -> list[str]:
    """Unmount anything left under root (reporting it), then remove root. Never raises."""
    _forget_default_files(root)
    problems: list[str] = []
    try:
        for entry in mounts_under(root):
            kind = "view" if entry.fstype == VIEW_FSTYPE else "mount"
            problems.append(f"{kind} left mounted: {entry.mount_point} ({entry.fstype})")
            if not lazy_unmount(entry.mount_point):
                problems.append(f"could not unmount {entry.mount_point}")
        if mounts_under(root):
            problems.append(f"{root} kept because mounts remain under it")
        elif root.exists():
            shutil.rmtree(root, ignore_errors=True)
    except Exception as exc:  # a teardown report is more useful than a teardown crash
        problems.append(f"cleaning {root}: {exc!r}")
    return problems


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Last line of defence when a session ends without its fixtures' teardown (Ctrl-C)."""
    problems = [p for root in _SESSION_ROOTS if root.exists() for p in _release_root(root)]
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("fusemount tests left mounts behind:\n  " + "\n  ".join(problems))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def test_root() -> Iterator[Path]:
    """/tmp/fusemount-tests-XXXX, mode 0755: pytest's tmp_path is root-only, useless to users."""
    root = fresh_dir(Path("/tmp"), "fusemount-tests-")
    _SESSION_ROOTS.append(root)
    yield root
    problems = _release_root(root)
    if problems:
        pytest.fail("left behind by the test session:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def source(test_root: Path) -> Path:
    """A fresh empty directory, mode 0755, owned by root. Removed with test_root."""
    return fresh_dir(test_root, "source-")


@pytest.fixture
def new_source(test_root: Path) -> SourceFactory:
    """Call it for each further fresh source directory (like `source`) a test needs."""
    return lambda: fresh_dir(test_root, "source-")


@pytest.fixture
def scratch(test_root: Path) -> Path:
    """A fresh directory, mode 0755, for files that are not sources (configs, logs)."""
    return fresh_dir(test_root, "scratch-")


@pytest.fixture
def view_factory(request: pytest.FixtureRequest, test_root: Path) -> Iterator[ViewFactory]:
    """Start daemons on fresh views; afterwards stop them and fail the test on any leftover."""
    handles: list[ViewHandle] = []

    def make(
        config_text: str = "", state: Path | None = None, extra_args: Sequence[str] = ()
    ) -> ViewHandle:
        handle = new_view(test_root, "view-", state)
        handles.append(handle)  # before start(): a failed start needs cleaning up too
        handle.daemon.start(handle.path, config_text, handle.state, extra_args)
        return handle

    yield make

    log_ok = request.node.get_closest_marker("daemon_log_ok") is not None
    problems = [p for handle in handles for p in teardown_problems(handle, log_ok)]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def view(view_factory: ViewFactory) -> ViewHandle:
    """A live view on built-in defaults, with no subtrees."""
    return view_factory()


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    """fmt_alice, fmt_bob (both in fmt_team), fmt_carol, fmt_dave (in fmt_admins)."""
    if os.geteuid() != 0:
        pytest.skip("test users need root")
    pool = UserPool()
    try:
        yield pool.acquire()
    finally:
        for problem in pool.release():
            warnings.warn(f"test users: {problem}", stacklevel=1)
