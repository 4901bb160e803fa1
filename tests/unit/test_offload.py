"""Offloader: deadline-bound calls for sources that may stall, and no descriptor leaks when
a call is abandoned (its inputs are duplicates it closes; its late result is closed)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
import trio

from fusemount.core.records import Identity, Kind, Policy, SubtreeId, SubtreeSpec
from fusemount.view import offload
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import Offloader, may_stall
from tests.support.daemon import wait_until


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
    # the duplicate and the late descriptor are both closed
    assert wait_until(lambda: _fd_count() == before, 5)
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


def _local() -> LiveSubtree:
    spec = SubtreeSpec("l", Kind.ATTACH, "/y", Identity(1, 2, 4, "ext4"), Policy(owner=0))
    return LiveSubtree(SubtreeId(2), spec, None)


def test_the_watchdog_sends_a_slow_subtree_to_workers_for_a_while() -> None:
    subtree = _local()
    offloader = Offloader(5.0)
    assert not offloader.offloaded(subtree)
    assert offloader.inline(subtree, lambda: 7, ()) == 7
    assert not offloader.offloaded(subtree)  # a quick call changes nothing
    offloader.inline(subtree, time.sleep, (), offload.SLOW_INLINE_S * 1.5)
    assert offloader.offloaded(subtree)
    assert subtree.offload_until > time.monotonic() + offload.OFFLOAD_FOR_S - 1
    subtree.offload_until = time.monotonic() - 1  # the period is over
    assert not offloader.offloaded(subtree)
    assert subtree.offload_until == 0.0


def test_workers_are_bounded_per_subtree_and_overall() -> None:
    offloader = Offloader(10.0, threads_total=offload.THREADS_PER_SUBTREE + 2)
    subtrees = [_local(), _local()]
    lock = threading.Lock()
    running: dict[int, int] = {0: 0, 1: 0}
    peak = {"0": 0, "1": 0, "all": 0}

    def work(which: int) -> None:
        with lock:
            running[which] += 1
            peak[str(which)] = max(peak[str(which)], running[which])
            peak["all"] = max(peak["all"], running[0] + running[1])
        time.sleep(0.05)
        with lock:
            running[which] -= 1

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3 * offload.THREADS_PER_SUBTREE):
                for which, subtree in enumerate(subtrees):
                    nursery.start_soon(offloader.call, subtree, work, (), which)

    trio.run(body)
    assert peak["0"] <= offload.THREADS_PER_SUBTREE
    assert peak["1"] <= offload.THREADS_PER_SUBTREE
    assert peak["all"] <= offload.THREADS_PER_SUBTREE + 2
    assert peak["all"] > offload.THREADS_PER_SUBTREE  # both subtrees did run at once


def test_a_call_that_never_got_a_thread_closes_its_duplicates(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    offloader = Offloader(0.3, threads_total=1)
    subtree = _local()
    release = threading.Event()
    before = _fd_count()

    async def occupy() -> None:
        with pytest.raises(OSError):  # abandoned at its own deadline, the thread runs on
            await offloader.call(subtree, release.wait, (), 5)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            # The only thread is busy past the second call's deadline.
            nursery.start_soon(occupy)
            await trio.sleep(0.05)
            with pytest.raises(OSError) as info:
                await offloader.call(subtree, os.fstat, (dir_fd,))
            assert info.value.errno == errno.EIO
            release.set()

    trio.run(body)
    assert _fd_count() == before
    os.close(dir_fd)


def test_an_open_refused_for_a_lease_is_retried_in_a_worker_without_o_nonblock(
    tmp_path: Path,
) -> None:
    (tmp_path / "f").write_text("x")
    trio_thread = threading.get_ident()
    seen: list[tuple[bool, bool]] = []  # (O_NONBLOCK asked, on the trio thread)

    def leased_open(dir_fd: int, flags: int) -> int:
        seen.append((bool(flags & os.O_NONBLOCK), threading.get_ident() == trio_thread))
        if flags & os.O_NONBLOCK:
            raise BlockingIOError(errno.EWOULDBLOCK, "lease")
        return os.open("f", flags, dir_fd=dir_fd)

    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)

    async def body() -> int:
        offloader = Offloader(5.0)
        with pytest.raises(BlockingIOError):  # the caller's own O_NONBLOCK: its native answer
            await offloader.open(_local(), leased_open, (dir_fd,), os.O_RDONLY | os.O_NONBLOCK,
                                 new_fds=lambda fd: (fd,), opened=int)
        return await offloader.open(_local(), leased_open, (dir_fd,), os.O_RDONLY,
                                    new_fds=lambda fd: (fd,), opened=int)

    fd = trio.run(body)
    assert seen == [(True, True), (True, True), (False, False)]
    assert os.read(fd, 10) == b"x"
    os.close(fd)
    os.close(dir_fd)


def test_an_inline_open_gets_back_the_caller_s_blocking_mode(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")

    def plain_open(dir_fd: int, flags: int) -> int:
        return os.open("f", flags, dir_fd=dir_fd)

    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)

    async def body(flags: int) -> int:
        return await Offloader(5.0).open(_local(), plain_open, (dir_fd,), flags,
                                         new_fds=lambda fd: (fd,), opened=int)

    blocking = trio.run(body, os.O_RDONLY)
    nonblocking = trio.run(body, os.O_RDONLY | os.O_NONBLOCK)
    assert os.get_blocking(blocking) and not os.get_blocking(nonblocking)
    for fd in (blocking, nonblocking, dir_fd):
        os.close(fd)


def test_reads_of_pages_not_cached_come_whole_from_a_worker(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # clean pages can be dropped
    half = len(data) // 2
    offloader = Offloader(5.0)
    subtree = _local()

    async def read(size: int, off: int) -> bytes:
        return await offloader.read(subtree, fd, size, off)

    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert trio.run(read, 4096, 8192) == data[8192:12288]  # nothing cached: EAGAIN, worker
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.pread(fd, half, 0)  # first half cached, second not: a partial read, then the rest
    assert trio.run(read, len(data), 0) == data
    assert trio.run(read, 4096, len(data) - 100) == data[-100:]  # EOF is not a partial read
    os.close(fd)


def test_one_user_s_blocked_calls_leave_the_slots_others_need() -> None:
    offloader = Offloader(10.0)
    subtree = _local()
    release = threading.Event()
    done: list[str] = []

    async def blocked() -> None:
        await offloader.call(subtree, release.wait, (), 10, user=1000)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(offload.THREADS_PER_USER + 2):  # more than alice's slots
                nursery.start_soon(blocked)
            await trio.sleep(0.1)
            with trio.fail_after(2):
                await offloader.call(subtree, done.append, (), "bob", user=1001)
                await offloader.call(subtree, done.append, (), "admin")
            release.set()

    trio.run(body)
    assert done == ["bob", "admin"]
