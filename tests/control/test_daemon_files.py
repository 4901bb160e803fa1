"""The daemon's own files (SPEC 8, issue 12 items 14 and 15): one daemon per state file, a
per-view default state file, files created without group/other write and without following a
symlink, state and pidfiles that others may write refused, and `stop` signalling only the
process that really serves the view.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusemount.daemon.serve import pidfile_for
from fusemount.host import daemonfiles
from tests.support.control import (
    fusemount,
    make_dir,
    reap_unmanaged,
    serving_pids,
    start_fails,
)
from tests.support.daemon import ViewFactory, ViewHandle, is_mounted, wait_until


@contextlib.contextmanager
def _planted(path: str) -> Iterator[Path]:
    """A path the test plants something at; removed afterwards whatever it became."""
    planted = Path(path)
    try:
        yield planted
    finally:
        with contextlib.suppress(FileNotFoundError):
            planted.unlink()


def test_escape_path_matches_systemd_escape() -> None:
    for path in ("/mnt/view", "/srv/my view/.x-y", "/", "/a//b/", "/.hidden/ü"):
        expected = subprocess.run(["systemd-escape", "--path", path], capture_output=True,
                                  text=True, check=True).stdout.strip()
        assert daemonfiles.escape_path(path) == expected, path


@pytest.mark.timeout(60)
def test_state_file_writable_by_others_is_refused_issue_12(scratch: Path) -> None:
    state = scratch / "state.json"
    state.write_text('{"format": "fusemount-state", "version": 1, "subtrees": []}\n')
    state.chmod(0o666)
    start_fails(scratch, make_dir(scratch, "mnt"), state, "writable by others")
    assert stat.S_IMODE(state.stat().st_mode) == 0o666  # refused, not "repaired"


@pytest.mark.timeout(60)
def test_symlinked_state_file_is_not_followed_issue_12(scratch: Path) -> None:
    target = scratch / "elsewhere.json"
    target.write_text('{"format": "fusemount-state", "version": 1, "subtrees": []}\n')
    target.chmod(0o600)
    state = scratch / "state.json"
    state.symlink_to(target)
    start_fails(scratch, make_dir(scratch, "mnt"), state, "symlink")


@pytest.mark.timeout(60)
def test_deep_state_path_gets_private_parents_issue_12(
    view_factory: ViewFactory, scratch: Path, source: Path
) -> None:
    state = scratch / "a" / "b" / "c" / "state.json"
    view = view_factory(state=state)
    view.ok(f"attach data {source}")
    for directory in (scratch / "a", scratch / "a" / "b", scratch / "a" / "b" / "c"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    lock = Path(f"{state}.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


@pytest.mark.timeout(60)
def test_pidfile_is_not_writable_by_others_issue_12(view: ViewHandle) -> None:
    st = os.lstat(pidfile_for(str(view.path)))
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0
    assert stat.S_IMODE(st.st_mode) & 0o022 == 0
    assert stat.S_IMODE(os.stat(daemonfiles.RUN_DIR).st_mode) & 0o022 == 0


@pytest.mark.timeout(60)
def test_symlinked_pidfile_is_refused_and_its_target_untouched_issue_12(scratch: Path) -> None:
    target = scratch / "precious"
    target.write_text("keep me\n")
    view_path = scratch / "mnt"
    os.makedirs(daemonfiles.RUN_DIR, exist_ok=True)
    with _planted(pidfile_for(str(view_path))) as pidfile:
        pidfile.symlink_to(target)
        start_fails(scratch, make_dir(scratch, "mnt"), scratch / "state.json", "symlink")
    assert target.read_text() == "keep me\n"


@pytest.mark.timeout(60)
def test_stop_refuses_a_pidfile_writable_by_others_issue_12(view: ViewHandle) -> None:
    pidfile = Path(pidfile_for(str(view.path)))
    mode = stat.S_IMODE(pidfile.stat().st_mode)
    pidfile.chmod(0o666)
    try:
        result = fusemount("stop", str(view.path))
    finally:
        pidfile.chmod(mode)
    assert result.returncode != 0
    assert "writable by others" in result.stderr
    assert view.daemon.running and is_mounted(view.path)


@pytest.mark.timeout(60)
def test_stop_never_signals_another_views_daemon_named_in_the_pidfile_issue_12(
    view_factory: ViewFactory,
) -> None:
    first, second = view_factory(), view_factory()
    other_pid = second.daemon.pid
    pidfile = Path(pidfile_for(str(first.path)))
    # The same file (still locked by the first daemon) now names the second one.
    pidfile.write_text(f"{other_pid}\n")
    result = fusemount("stop", str(first.path))
    assert result.returncode != 0
    assert "refusing" in result.stderr
    assert first.daemon.running and second.daemon.running
    # A new file naming the second daemon is held by nobody: `stop` does not trust it either,
    # it unmounts the first view the way umount would, and the second daemon lives on.
    pidfile.unlink()
    pidfile.write_text(f"{other_pid}\n")
    pidfile.chmod(0o644)
    result = fusemount("stop", str(first.path))
    assert second.daemon.running and is_mounted(second.path)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: not first.daemon.running, 15)
    assert first.daemon.stop() == 0  # unmounted, it stopped cleanly by itself (no signal)


@pytest.mark.timeout(60)
def test_second_serve_on_the_same_state_file_fails_naming_the_holder_issue_12(
    view: ViewHandle, scratch: Path
) -> None:
    other = make_dir(scratch, "mnt")
    try:
        result = fusemount("serve", str(other), "--state", str(view.state), timeout_s=20)
    finally:
        leftovers = reap_unmanaged(other)
    assert leftovers == []
    assert result.returncode != 0
    assert f"pid {view.daemon.pid}" in result.stderr, result.stderr
    assert str(view.path) in result.stderr
    assert not is_mounted(other)
    assert view.daemon.running


@pytest.mark.timeout(60)
def test_default_state_file_is_per_view_issue_12(scratch: Path, source: Path) -> None:
    first, second = make_dir(scratch, "one"), make_dir(scratch, "two")
    states = [Path(daemonfiles.default_state_path(str(v))) for v in (first, second)]
    assert states[0] != states[1]
    made: list[Path] = []
    try:
        for view in (first, second):
            result = fusemount("serve", str(view), "--background")
            assert result.returncode == 0, result.stderr
        assert fusemount("attach", str(first), "data", str(source)).returncode == 0
        made = [*states, *(Path(f"{s}.lock") for s in states)]
        assert states[0].exists() and "data" in states[0].read_text()
        assert not states[1].exists() or "data" not in states[1].read_text()
        lock = Path(f"{states[1]}.lock").read_text()
        assert lock == f"pid {serving_pids(second)[0]} serving {second}\n"
        for view in (first, second):
            assert fusemount("stop", str(view)).returncode == 0
    finally:
        leftovers = reap_unmanaged(first) + reap_unmanaged(second)
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    assert leftovers == []
