"""A view must never serve itself: sources that contain the view or lie inside it (SPEC 4).

Issue 12 item 2. The daemon serves one request at a time, so a source whose walk or whose
private mount copy reaches the view's own mount makes it wait on itself. `attach` refuses
such a source with EINVAL (checked on descriptors: the view's directory and its ancestors by
device and inode, the view's filesystem by device, the mounts the copy would take), and a
restart that finds one in the state file lists it as failed. Every command that could hang
runs with a deadline, after which the daemon is killed, so a regression fails instead of
wedging the suite.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.ctl import ctl, mounts_json
from tests.support.daemon import ViewHandle
from tests.support.escape import mounted

DEADLINE_S = 20.0
T = TypeVar("T")


def _bounded(view: ViewHandle, fn: Callable[[], T]) -> T:
    """fn() in a thread with a deadline. A daemon waiting on itself leaves the thread stuck
    in the kernel, unkillable; killing the daemon aborts its requests and frees it."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(DEADLINE_S)
    if worker.is_alive():
        pid = view.daemon.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        worker.join(10)
        pytest.fail(f"the view did not answer within {DEADLINE_S} s: it waits on itself")
    if errors:
        raise errors[0]
    return out[0]


def _bounded_err(view: ViewHandle, command: str) -> str | int:
    """The errno name (or 0) of one ctl command, with a deadline."""
    reply = _bounded(view, lambda: ctl(view.path, command))
    return reply.errno_name or 0


def _listing_bounded(view: ViewHandle, path: Path) -> list[str]:
    return _bounded(view, lambda: sorted(os.listdir(path)))


@pytest.mark.timeout(90)
def test_attach_of_a_directory_containing_the_view_is_einval(view: ViewHandle) -> None:
    holder = view.path.parent  # the view is HOLDER/mnt
    assert _bounded_err(view, f"attach p {holder}") == "EINVAL"
    assert _bounded_err(view, f"attach p {holder.parent}") == "EINVAL"
    assert _bounded_err(view, "attach p /") == "EINVAL"
    assert _bounded_err(view, f"attach p {view.path}") == "EINVAL"
    assert view.mounts_json() == []
    assert _listing_bounded(view, view.path) == [".fusemount"]


@pytest.mark.timeout(90)
def test_attach_of_a_path_inside_the_view_is_einval_without_hanging(
    view: ViewHandle, source: Path
) -> None:
    (source / "d").mkdir()
    view.ok(f"attach s {source}")
    assert _bounded_err(view, f"attach self {view.path}/s") == "EINVAL"
    assert _bounded_err(view, f"attach self {view.path}/s/d") == "EINVAL"
    assert _bounded_err(view, f"attach self {view.path}/.fusemount") == "EINVAL"
    assert _bounded_err(view, f"mount self ext4 {view.path}/s/img") == "EINVAL"
    assert [r["name"] for r in view.mounts_json()] == ["s"]
    assert _listing_bounded(view, view.path / "s") == ["d"]


@pytest.mark.timeout(90)
def test_attach_of_a_source_holding_a_bind_mount_of_the_view_is_einval(
    view: ViewHandle, source: Path
) -> None:
    """The source is no ancestor of the view, but its mount copy would take one of the view."""
    (source / "inner").mkdir()
    with mounted(["--bind", str(view.path)], source / "inner"):
        assert _bounded_err(view, f"attach p {source}") == "EINVAL"
    assert view.mounts_json() == []
    view.ok(f"attach p {source}")  # once the bind is gone the same source is fine
    assert _listing_bounded(view, view.path / "p") == ["inner"]
    assert _listing_bounded(view, view.path / "p" / "inner") == []


@pytest.mark.timeout(90)
@pytest.mark.daemon_log_ok  # the restart warns that the subtrees could not be re-attached
def test_restart_lists_sources_that_contain_or_lie_in_the_new_view_as_failed(
    view: ViewHandle, test_root: Path
) -> None:
    """The same state file served at a view that the recorded sources contain or hold."""
    outer = Path(os.path.realpath(test_root)) / f"outer-{os.getpid()}"
    new_view = outer / "mnt"
    (new_view / "s").mkdir(parents=True)
    outer.chmod(0o755)
    new_view.chmod(0o755)
    view.ok(f"attach contains {outer}")
    view.ok(f"attach inside {new_view}/s")
    view.daemon.stop()
    (new_view / "s").rmdir()  # a view starts on an empty directory
    view.daemon.start(new_view, view.daemon.config_text, view.state)
    records = {str(r["name"]): r for r in mounts_json(new_view)}
    assert {name: r["state"] for name, r in records.items()} == {
        "contains": "failed", "inside": "failed"}, json.dumps(records)
    assert "contains the view" in str(records["contains"]["reason"])
    assert "inside the view" in str(records["inside"]["reason"])
    assert _listing_bounded(view, new_view) == [".fusemount"]
    view.daemon.stop()
    assert os.listdir(outer) == ["mnt"]
