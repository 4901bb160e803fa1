"""`mount NAME tmpfs none`: a daemon-made tmpfs, detached, nosuid,nodev, reached only via the view.

SPEC 4 `mount`: the filesystem is created with OPTS as a detached mount never attached to
any path, always nosuid,nodev (and ro if asked); holders work as for `attach`.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.mounts import daemon_fds_on, mountinfo_devs, statvfs_flags_of_mount

MIB = 1 << 20


def _dev_of(reply: dict[str, object]) -> int:
    dev = reply.get("dev")
    assert isinstance(dev, int) and dev != 0, f"mount reply names no device: {reply!r}"
    return dev


def _errno_of_writing(path: Path, total: int) -> int:
    """Write total bytes to path through the view; 0, or the errno that stopped it."""
    chunk = b"x" * MIB
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        return exc.errno or -1
    try:
        written = 0
        while written < total:
            written += os.write(fd, chunk[: total - written])
        os.fsync(fd)
    except OSError as exc:
        return exc.errno or -1
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return errno.ENOSPC
    return 0


@pytest.mark.timeout(60)
def test_mount_tmpfs_file_io_works_through_the_view(view: ViewHandle) -> None:
    view.ok("mount t1 tmpfs none options=size=8m,mode=0755")
    root = view.path / "t1"
    # VIEW/t1 presents its gate (SPEC 5, default mode): root's, no grants, so 0700; the
    # tmpfs root's own mode shows under hidden names (next test).
    assert os.stat(root).st_mode & 0o7777 == 0o700
    (root / "dir").mkdir()
    (root / "dir" / "f.txt").write_bytes(b"hello tmpfs\n")
    assert (root / "dir" / "f.txt").read_bytes() == b"hello tmpfs\n"
    os.rename(root / "dir" / "f.txt", root / "g.txt")
    assert sorted(os.listdir(root)) == ["dir", "g.txt"]
    (root / "g.txt").unlink()
    (root / "dir").rmdir()
    assert os.listdir(root) == []
    [record] = [r for r in view.mounts_json() if r["name"] == "t1"]
    assert record["kind"] == "mount"
    assert record["fstype"] == "tmpfs"
    assert record["state"] == "attached"
    view.ok("detach t1")
    assert not root.exists()


@pytest.mark.timeout(60)
def test_mount_tmpfs_mode_option_shows_under_hidden_names(view_factory: ViewFactory) -> None:
    view = view_factory("[access]\nhide_names = true\n")
    view.ok("mount t1 tmpfs none options=size=8m,mode=0751")
    assert os.stat(view.path / "t1").st_mode & 0o7777 == 0o751


def _wait_free_bytes(pid: int, dev: int, wanted: int, timeout_s: float = 10.0) -> int:
    """Free bytes of the daemon's filesystem on dev, polled until >= wanted or the deadline.

    FUSE sends RELEASE and FORGET asynchronously after close() and unlink() return, so the
    space of an unlinked file comes back only once the daemon has let go of its descriptors.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        [path, *_] = daemon_fds_on(pid, dev)
        st = os.statvfs(path)
        free = st.f_bfree * st.f_frsize
        if free >= wanted or time.monotonic() >= deadline:
            return free
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_mount_tmpfs_size_option_gives_enospc_through_the_view(view: ViewHandle) -> None:
    dev = _dev_of(view.ok("mount t1 tmpfs none options=size=8m,mode=0755"))
    assert _errno_of_writing(view.path / "t1" / "big", 12 * MIB) == errno.ENOSPC
    # The filesystem is still usable once the space is given back.
    (view.path / "t1" / "big").unlink()
    assert _wait_free_bytes(view.pid, dev, 7 * MIB) >= 7 * MIB, (
        "an unlinked, closed file's space never came back: the daemon keeps it open"
    )
    (view.path / "t1" / "small").write_bytes(b"y" * MIB)
    assert (view.path / "t1" / "small").stat().st_size == MIB
    view.ok("detach t1")


@pytest.mark.timeout(60)
def test_mount_tmpfs_appears_at_no_path_in_any_mountinfo(view: ViewHandle) -> None:
    pid = view.pid
    reply = view.ok("mount t1 tmpfs none options=size=8m,mode=0755")
    dev = _dev_of(reply)
    (view.path / "t1" / "f").write_bytes(b"x")
    # The daemon really holds the filesystem (so dev is the right device to look for) ...
    assert daemon_fds_on(pid, dev), "the daemon holds no descriptor on the new tmpfs"
    # ... and no mount table lists it at any path.
    for who in ("self", pid):
        listed = [point for d, point in mountinfo_devs(who) if d == dev]
        assert listed == [], f"/proc/{who}/mountinfo lists the daemon-made tmpfs at {listed}"
    view.ok("detach t1")


@pytest.mark.timeout(60)
def test_mount_tmpfs_is_always_nosuid_nodev(view: ViewHandle) -> None:
    pid = view.pid
    dev = _dev_of(view.ok("mount t1 tmpfs none options=size=8m"))
    flags = statvfs_flags_of_mount(pid, dev)
    assert flags & os.ST_NOSUID, "daemon-made mount lacks nosuid"
    assert flags & os.ST_NODEV, "daemon-made mount lacks nodev"
    assert not flags & os.ST_RDONLY
    view.ok("detach t1")


@pytest.mark.timeout(60)
def test_mount_tmpfs_size_option_reaches_the_filesystem(view: ViewHandle) -> None:
    pid = view.pid
    dev = _dev_of(view.ok("mount t1 tmpfs none options=size=8m"))
    [path, *_] = daemon_fds_on(pid, dev)
    st = os.statvfs(path)
    assert st.f_blocks * st.f_frsize == 8 * MIB
    view.ok("detach t1")


@pytest.mark.timeout(60)
def test_mount_ro_tmpfs_writes_fail_erofs(view: ViewHandle) -> None:
    pid = view.pid
    dev = _dev_of(view.ok("mount r1 tmpfs none ro options=size=8m"))
    assert statvfs_flags_of_mount(pid, dev) & os.ST_RDONLY, "ro mount is not read-only"
    root = view.path / "r1"
    assert os.listdir(root) == []
    with pytest.raises(OSError) as created:
        (root / "f").write_bytes(b"x")
    assert created.value.errno == errno.EROFS
    with pytest.raises(OSError) as made:
        (root / "d").mkdir()
    assert made.value.errno == errno.EROFS
    [record] = [r for r in view.mounts_json() if r["name"] == "r1"]
    assert record["ro"] is True
    view.ok("detach r1")


@pytest.mark.timeout(60)
def test_mount_noexec_option_is_accepted_and_applied(view: ViewHandle) -> None:
    pid = view.pid
    dev = _dev_of(view.ok("mount x1 tmpfs none options=noexec,size=8m"))
    flags = statvfs_flags_of_mount(pid, dev)
    assert flags & os.ST_NOEXEC
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    (view.path / "x1" / "f").write_bytes(b"ok")
    assert (view.path / "x1" / "f").read_bytes() == b"ok"
    view.ok("detach x1")


@pytest.mark.timeout(60)
def test_mount_holders_add_and_last_release_detaches(view: ViewHandle) -> None:
    first = view.ok("mount t tmpfs none holder=a")
    (view.path / "t" / "kept").write_bytes(b"one filesystem")
    second = view.ok("mount t tmpfs none holder=b")
    # The second mount joined the first filesystem instead of making another.
    assert (view.path / "t" / "kept").read_bytes() == b"one filesystem"
    assert first.get("holders") == ["a"]
    assert second.get("holders") == ["a", "b"]
    [record] = [r for r in view.mounts_json() if r["name"] == "t"]
    assert record["holders"] == ["a", "b"]
    view.ok("mount t tmpfs none holder=b")  # repeating a holder is a no-op
    [record] = [r for r in view.mounts_json() if r["name"] == "t"]
    assert record["holders"] == ["a", "b"]
    view.ok("release t a")
    assert (view.path / "t" / "kept").read_bytes() == b"one filesystem"
    view.ok("release t b")
    assert [r for r in view.mounts_json() if r["name"] == "t"] == []
    assert not (view.path / "t").exists()
    assert view.err("detach t") == errno.ENOENT


@pytest.mark.timeout(60)
def test_mount_tmpfs_is_created_again_on_restart(view: ViewHandle) -> None:
    view.ok("mount t1 tmpfs none options=size=8m,mode=0755")
    (view.path / "t1" / "before").write_bytes(b"x")
    view.restart()
    [record] = [r for r in view.mounts_json() if r["name"] == "t1"]
    assert record["state"] == "attached", record
    assert record["options"] == "size=8m,mode=0755"
    root = view.path / "t1"
    # A fresh tmpfs: the old one went with the old daemon.
    assert os.listdir(root) == []
    assert os.stat(root).st_mode & 0o7777 == 0o700  # its gate (SPEC 5): root's, no grants
    (root / "after").write_bytes(b"y")
    assert (root / "after").read_bytes() == b"y"
    view.ok("detach t1")
