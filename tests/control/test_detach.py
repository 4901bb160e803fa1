"""`detach NAME [force]` (SPEC 4): EBUSY while files are open; with force the name goes at
once, open files keep working, the name can be reused at once, and the old source's
descriptors are closed after the last open file is.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.support.control import (
    fd_count,
    fd_identities,
    identity,
    names_listed,
    record_of,
    refused,
)
from tests.support.daemon import ViewHandle, wait_until
from tests.support.dirs import SourceFactory

RELEASE_DEADLINE_S = 10.0  # FUSE sends RELEASE after close() returns, asynchronously


def _wait_until_not_held(pid: int, objects: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Poll until the daemon holds none of objects; returns those still held at the deadline."""
    deadline = time.monotonic() + RELEASE_DEADLINE_S
    while True:
        held = fd_identities(pid) & objects
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_detach_is_ebusy_while_a_file_is_open(view: ViewHandle, source: Path) -> None:
    (source / "f").write_text("x")
    view.ok(f"attach data {source}")
    with open(view.path / "data" / "f", "rb"):
        message = refused(view, "detach data", errno.EBUSY)
        assert "data" in message
        assert record_of(view.mounts_json(), "data")["open_files"] == 1
    # the kernel's RELEASE may trail close()
    wait_until(lambda: view.ctl("detach data").errno != errno.EBUSY, RELEASE_DEADLINE_S)
    assert names_listed(view.path) == set()


@pytest.mark.timeout(60)
def test_force_detach_hides_name_but_open_file_keeps_working(
    view: ViewHandle, source: Path
) -> None:
    (source / "f").write_bytes(b"old")
    view.ok(f"attach data {source}")
    with open(view.path / "data" / "f", "r+b", buffering=0) as f:
        view.ok("detach data force")
        assert "data" not in names_listed(view.path)
        assert view.mounts_json() == []
        with pytest.raises(FileNotFoundError):
            os.stat(view.path / "data")
        with pytest.raises(FileNotFoundError):
            os.stat(view.path / "data" / "f")
        refused(view, "detach data", errno.ENOENT)
        assert f.read() == b"old"
        f.seek(0)
        assert f.write(b"new") == 3
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read() == b"new"
    assert (source / "f").read_bytes() == b"new"


@pytest.mark.timeout(60)
def test_force_detached_name_is_reused_at_once_for_new_source(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    old, new = new_source(), new_source()
    (old / "old-file").write_bytes(b"old")
    (new / "new-file").write_bytes(b"new")
    view.ok(f"attach data {old}")
    with open(view.path / "data" / "old-file", "rb", buffering=0) as f:
        view.ok("detach data force")
        reply = view.ok(f"attach data {new}")
        assert (reply["dev"], reply["ino"]) == identity(new)
        assert sorted(os.listdir(view.path / "data")) == ["new-file"]
        assert (view.path / "data" / "new-file").read_bytes() == b"new"
        assert not (view.path / "data" / "old-file").exists()
        assert record_of(view.mounts_json(), "data")["source"] == str(new)
        assert f.read() == b"old"


@pytest.mark.timeout(60)
def test_old_source_is_released_after_last_open_file_closes(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    pid = view.pid
    old, new = new_source(), new_source()
    (old / "f").write_bytes(b"old")
    (new / "g").write_bytes(b"new")
    baseline = fd_count(pid)
    old_objects = {identity(old), identity(old / "f")}
    view.ok(f"attach data {old}")
    with open(view.path / "data" / "f", "rb", buffering=0) as f:
        view.ok("detach data force")
        view.ok(f"attach data {new}")
        assert (view.path / "data" / "g").read_bytes() == b"new"
        # Still open: the old source must still be held, or the file could not work.
        assert identity(old) in fd_identities(pid)
        assert f.read() == b"old"
    still_held = _wait_until_not_held(pid, old_objects)
    assert still_held == set(), "daemon still holds the force-detached source after last close"
    assert (view.path / "data" / "g").read_bytes() == b"new"
    # And once the new one goes too, the daemon is back to its starting descriptors.
    view.ok("detach data")
    assert wait_until(lambda: fd_count(pid) <= baseline, RELEASE_DEADLINE_S)
    assert fd_identities(pid) & {identity(new), identity(new / "g")} == set()


@pytest.mark.timeout(60)
def test_plain_detach_releases_source_at_once(view: ViewHandle, source: Path) -> None:
    pid = view.pid
    (source / "f").write_bytes(b"x")
    view.ok(f"attach data {source}")
    assert (view.path / "data" / "f").read_bytes() == b"x"
    assert identity(source) in fd_identities(pid)
    view.ok("detach data")
    assert _wait_until_not_held(pid, {identity(source), identity(source / "f")}) == set()


@pytest.mark.timeout(60)
def test_force_detach_without_open_files_releases_source(view: ViewHandle, source: Path) -> None:
    pid = view.pid
    view.ok(f"attach data {source}")
    os.listdir(view.path / "data")
    view.ok("detach data force")
    assert names_listed(view.path) == set()
    assert _wait_until_not_held(pid, {identity(source)}) == set()


@pytest.mark.timeout(60)
def test_force_detach_with_open_directory(view: ViewHandle, source: Path) -> None:
    (source / "sub").mkdir()
    (source / "sub" / "f").write_text("x")
    view.ok(f"attach data {source}")
    fd = os.open(view.path / "data" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        view.ok("detach data force")
        assert names_listed(view.path) == set()
        assert os.listdir(fd) == ["f"]
    finally:
        os.close(fd)
    assert _wait_until_not_held(view.pid, {identity(source)}) == set()


@pytest.mark.timeout(60)
def test_force_detach_fails_new_lookups_under_open_directory(
    view: ViewHandle, source: Path
) -> None:
    sub = source / "sub"
    sub.mkdir()
    (sub / "g").write_text("g")
    (sub / "h").write_text("h")
    view.ok(f"attach data {source}")
    fd = os.open(view.path / "data" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        view.ok("detach data force")
        # Names never looked up before, so no kernel cache can answer for the daemon.
        with pytest.raises(OSError):
            os.stat("g", dir_fd=fd)
        with pytest.raises(OSError):
            os.close(os.open("h", os.O_RDONLY, dir_fd=fd))
        with pytest.raises(OSError):
            os.close(os.open("new", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        # The open directory itself keeps working.
        assert sorted(os.listdir(fd)) == ["g", "h"]
    finally:
        os.close(fd)
    assert sorted(os.listdir(sub)) == ["g", "h"]
