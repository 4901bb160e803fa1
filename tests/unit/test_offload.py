"""Offloader: deadline-bound calls for sources that may stall, and no descriptor leaks when
a call is abandoned (its inputs are duplicates it closes; its late result is closed)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import trio

from fusemount.core.records import Identity, Kind, Policy, SubtreeId, SubtreeSpec
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import Offloader, may_stall


def _subtree() -> LiveSubtree:
    spec = SubtreeSpec("s", Kind.ATTACH, "/x", Identity(1, 2, 3, "fuse.x"), Policy(owner=0))
    return LiveSubtree(SubtreeId(1), spec, None, offload=True)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_may_stall_is_true_for_network_and_fuse_sources_only() -> None:
    assert may_stall("nfs4") and may_stall("fuse.sshfs") and may_stall("cifs")
    assert not may_stall("ext4") and not may_stall("tmpfs") and not may_stall("xfs")


def test_call_returns_result_and_closes_its_duplicates(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    before = _fd_count()

    async def body() -> os.stat_result:
        return await Offloader(5.0).call(_subtree(), os.fstat, (dir_fd,))

    st = trio.run(body)
    assert st.st_ino == os.stat(tmp_path).st_ino
    assert _fd_count() == before
    os.close(dir_fd)


def test_late_result_of_an_abandoned_call_is_closed_not_leaked(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    before = _fd_count()
    subtree = _subtree()

    def slow_open(fd: int) -> int:
        time.sleep(0.6)
        return os.open("f", os.O_RDONLY, dir_fd=fd)

    async def body() -> None:
        with pytest.raises(OSError) as info:
            await Offloader(0.2).call(subtree, slow_open, (dir_fd,), new_fds=lambda fd: (fd,))
        assert info.value.errno == errno.EIO
        assert subtree.stalled_since is not None

    trio.run(body)
    deadline = time.monotonic() + 5
    while _fd_count() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fd_count() == before  # the duplicate and the late descriptor are both closed
    os.close(dir_fd)


def test_a_call_that_answers_clears_the_stall(tmp_path: Path) -> None:
    subtree = _subtree()
    subtree.stalled_since = 1.0
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)

    async def body() -> None:
        await Offloader(5.0).call(subtree, os.fstat, (dir_fd,))

    trio.run(body)
    assert subtree.stalled_since is None
    os.close(dir_fd)
