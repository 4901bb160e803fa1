"""`mount NAME ext4 IMAGE`: an image attached through an autoclear loop device (SPEC 4, 8).

What a careful `mount -o loop` user expects: the loop device exists while the filesystem is
used and goes away by itself after; the image is left clean; data survives a detach and a
daemon restart; a read-only mount never writes; a busy subtree refuses a plain detach.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.mounts import (
    fsck_clean,
    loop_devices_of,
    make_ext4_image,
    mountinfo_devs,
    release_loops,
    statvfs_flags_of_mount,
    wait_loop_released,
)


def _record(view: ViewHandle, name: str) -> dict[str, object]:
    found = [r for r in view.mounts_json() if r["name"] == name]
    assert len(found) == 1, f"{name} listed {len(found)} times in {view.mounts_json()!r}"
    return found[0]


def _assert_released_and_clean(image: Path) -> None:
    still = wait_loop_released(image)
    assert still == [], f"loop device still bound to {image} after detach: {still}"
    check = fsck_clean(image)
    assert check.returncode == 0, f"e2fsck -fn {image}:\n{check.stdout}{check.stderr}"


@pytest.mark.timeout(60)
def test_mount_ext4_image_io_uses_an_autoclear_loop_device(
    image: Path, view: ViewHandle
) -> None:
    assert loop_devices_of(image) == []
    reply = view.ok(f"mount e1 ext4 {image}")
    root = view.path / "e1"
    assert "lost+found" in os.listdir(root)
    (root / "data").mkdir()
    (root / "data" / "f.bin").write_bytes(os.urandom(1 << 20))
    assert (root / "data" / "f.bin").stat().st_size == 1 << 20
    [loop] = loop_devices_of(image)
    assert loop.autoclear, f"{loop.name} was bound without autoclear"
    assert not loop.read_only
    # The ext4 filesystem on that loop device is mounted at no path.
    dev = reply.get("dev")
    assert isinstance(dev, int) and dev == os.stat(loop.name).st_rdev, reply
    pid = view.pid
    for who in ("self", pid):
        assert [p for d, p in mountinfo_devs(who) if d == dev] == []
    flags = statvfs_flags_of_mount(pid, dev)
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    view.ok("detach e1")


@pytest.mark.timeout(60)
def test_mount_ext4_detach_releases_loop_and_leaves_image_clean(
    image: Path, view: ViewHandle
) -> None:
    view.ok(f"mount e1 ext4 {image}")
    root = view.path / "e1"
    for i in range(20):
        (root / f"f{i}").write_bytes(b"z" * 4096 * i)
    os.link(root / "f3", root / "hard")
    os.symlink("f3", root / "sym")
    assert loop_devices_of(image) != []
    view.ok("detach e1")
    assert not root.exists()
    _assert_released_and_clean(image)


@pytest.mark.timeout(90)
def test_mount_ext4_data_survives_detach_remount_and_restart(
    image: Path, view: ViewHandle
) -> None:
    view.ok(f"mount e1 ext4 {image}")
    (view.path / "e1" / "first").write_bytes(b"written before detach")
    view.ok("detach e1")
    assert wait_loop_released(image) == []

    view.ok(f"mount e1 ext4 {image}")
    assert (view.path / "e1" / "first").read_bytes() == b"written before detach"
    (view.path / "e1" / "second").write_bytes(b"written before restart")

    view.restart()
    assert _record(view, "e1")["state"] == "attached"
    assert (view.path / "e1" / "first").read_bytes() == b"written before detach"
    assert (view.path / "e1" / "second").read_bytes() == b"written before restart"
    [loop] = loop_devices_of(image)  # exactly one: the old daemon's went with it
    assert loop.autoclear
    view.ok("detach e1")
    _assert_released_and_clean(image)


@pytest.mark.timeout(60)
def test_mount_ext4_ro_never_writes_the_image(source: Path, view: ViewHandle) -> None:
    content = source / "content"
    content.mkdir()
    (content / "readme").write_text("read only\n")
    image = make_ext4_image(source / "ro.img", content)
    try:
        before = image.read_bytes()
        pid = view.pid
        reply = view.ok(f"mount r1 ext4 {image} ro")
        root = view.path / "r1"
        assert (root / "readme").read_text() == "read only\n"
        for attempt in (
            lambda: (root / "new").write_bytes(b"x"),
            lambda: (root / "readme").write_text("changed"),
            lambda: (root / "dir").mkdir(),
            lambda: (root / "readme").unlink(),
        ):
            with pytest.raises(OSError) as failed:
                attempt()
            assert failed.value.errno == errno.EROFS
        [loop] = loop_devices_of(image)
        assert loop.read_only, "a ro mount bound the image read-write"
        dev = reply.get("dev")
        assert isinstance(dev, int)
        assert statvfs_flags_of_mount(pid, dev) & os.ST_RDONLY
        view.ok("detach r1")
        assert wait_loop_released(image) == []
        assert image.read_bytes() == before, "a ro mount changed the image"
    finally:
        release_loops(image)


def _restart_with_image_changed(view: ViewHandle, image: Path,
                                change: Callable[[], object]) -> None:
    """Mount image as e1, write to it, stop the daemon, change() the image, start again:
    e1 must come back failed, with a reason."""
    view.ok(f"mount e1 ext4 {image}")
    (view.path / "e1" / "f").write_bytes(b"x")
    assert view.daemon.stop() == 0
    assert wait_loop_released(image) == []
    change()
    view.start_again()
    record = _record(view, "e1")
    assert record["state"] == "failed", record
    assert isinstance(record["reason"], str) and record["reason"], record


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the daemon warns about the subtree it could not re-attach
def test_mount_image_gone_between_restarts_comes_back_failed(
    image: Path, view: ViewHandle
) -> None:
    _restart_with_image_changed(view, image, image.unlink)
    assert not (view.path / "e1" / "f").exists()
    view.ok("detach e1")
    assert [r for r in view.mounts_json() if r["name"] == "e1"] == []


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the daemon warns about the subtree it could not re-attach
def test_mount_image_replaced_between_restarts_comes_back_failed(
    image: Path, view: ViewHandle
) -> None:
    # Another filesystem at the same path: a new inode, so a different source identity.
    _restart_with_image_changed(
        view, image, lambda: os.rename(make_ext4_image(image.parent / "impostor.img"), image))
    assert loop_devices_of(image) == [], "a replaced image was bound to a loop device"
    assert not (view.path / "e1" / "f").exists()
    # An admin may mount the new image under the failed name (SPEC 8: until re-attached).
    view.ok(f"mount e1 ext4 {image}")
    assert _record(view, "e1")["state"] == "attached"
    assert not (view.path / "e1" / "f").exists()
    view.ok("detach e1")
    _assert_released_and_clean(image)


@pytest.mark.timeout(60)
def test_mount_detach_with_open_file_is_ebusy_and_force_releases_after_last_close(
    image: Path, view: ViewHandle
) -> None:
    view.ok(f"mount e1 ext4 {image}")
    path = view.path / "e1" / "open.txt"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before detach\n")
        assert view.err("detach e1") == errno.EBUSY
        assert _record(view, "e1")["state"] == "attached"
        view.ok("detach e1 force")
        assert not (view.path / "e1").exists()
        assert [r for r in view.mounts_json() if r["name"] == "e1"] == []
        # The open file keeps working, and keeps the filesystem (and its loop) alive.
        os.write(fd, b"after detach\n")
        os.fsync(fd)
        assert os.pread(fd, 100, 0) == b"before detach\nafter detach\n"
        assert loop_devices_of(image) != [], "loop released while a file was still open"
    finally:
        os.close(fd)
    _assert_released_and_clean(image)
    # What was written after the forced detach reached the image.
    view.ok(f"mount e1 ext4 {image}")
    assert (view.path / "e1" / "open.txt").read_bytes() == b"before detach\nafter detach\n"
    view.ok("detach e1")
    assert wait_loop_released(image) == []


@pytest.mark.timeout(60)
def test_mount_image_holders_share_one_loop_and_other_sources_are_eexist(
    image: Path, view: ViewHandle
) -> None:
    view.ok(f"mount e1 ext4 {image} holder=a")
    view.ok(f"mount e1 ext4 {image} holder=b")
    assert len(loop_devices_of(image)) == 1, "a second holder bound the image again"
    other = make_ext4_image(image.parent / "other.img")
    try:
        assert view.err(f"mount e1 ext4 {other} holder=c") == errno.EEXIST
        assert loop_devices_of(other) == []
        assert view.err("mount e1 tmpfs none holder=c") == errno.EEXIST
    finally:
        release_loops(other)
    assert _record(view, "e1")["holders"] == ["a", "b"]
    view.restart()
    assert _record(view, "e1")["holders"] == ["a", "b"]
    view.ok("release e1 a")
    assert len(loop_devices_of(image)) == 1
    view.ok("release e1 b")
    assert [r for r in view.mounts_json() if r["name"] == "e1"] == []
    _assert_released_and_clean(image)
