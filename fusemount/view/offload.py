"""Calls on sources that may stall run in worker threads, with a deadline (issue 7).

Local filesystems answer in microseconds, and a thread hop costs ~80 us, so their calls
stay inline on the trio thread. Network and FUSE filesystems can hang for minutes; a
hang inline would stall every request of every subtree. For those subtrees each backing
call runs in a worker thread, at most THREADS_PER_SUBTREE at once, and fails with EIO
after `limits.request_timeout_s`; the subtree is then reported `"health": "stalled"`
until a call succeeds again.

A thread that misses its deadline is abandoned, not killed (a blocked syscall cannot be
interrupted). So it never sees our descriptors: it works on duplicates that it closes
itself, and descriptors it creates after being abandoned are closed by whichever side
sees the result last. Known gap: re-opening an evicted inode (open_by_handle_at) on
such a source still happens inline.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, cast

import trio

from fusemount.view.live import LiveSubtree

R = TypeVar("R")

THREADS_PER_SUBTREE = 4
_SLOW_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs",
    "fuse", "fuseblk",
})


def may_stall(fstype: str) -> bool:
    """Whether a source's filesystem can block for long (network or userspace)."""
    return fstype in _SLOW_FSTYPES or fstype.startswith("fuse.")


class _Job:
    """Hand-off between the trio side and a worker thread that may be abandoned."""

    __slots__ = ("abandoned", "done", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.done = False
        self.result: object = None


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Offloader:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def call(
        self,
        subtree: LiveSubtree,
        fn: Callable[..., R],
        fds: Sequence[int],
        *args: object,
        new_fds: Callable[[R], Iterable[int]] | None = None,
    ) -> R:
        """fn(*duplicates of fds, *args) in a worker thread; EIO after the deadline.

        new_fds tells which descriptors fn's result creates, so an abandoned result's
        descriptors are closed instead of leaked.
        """
        if subtree.limiter is None:
            subtree.limiter = trio.CapacityLimiter(THREADS_PER_SUBTREE)
        dups = [os.dup(fd) for fd in fds]
        job = _Job()

        def work() -> R:
            try:
                result = fn(*dups, *args)
            finally:
                _close_all(dups)
            with job.lock:
                if job.abandoned:
                    if new_fds is not None:
                        _close_all(new_fds(result))
                else:
                    job.done = True
                    job.result = result
            return result

        with trio.move_on_after(self.timeout_s):
            try:
                result = await trio.to_thread.run_sync(
                    work, limiter=subtree.limiter, abandon_on_cancel=True)
            except BaseException:
                if not job.done:
                    # Never started, or failed: the thread holds nothing of ours.
                    with job.lock:
                        job.abandoned = True
                raise
            subtree.stalled_since = None
            return result
        with job.lock:
            job.abandoned = True
            late = job.result if job.done else None
        if late is not None and new_fds is not None:
            _close_all(new_fds(cast(R, late)))
        if subtree.stalled_since is None:
            subtree.stalled_since = trio.current_time()
        raise OSError(errno.EIO, f"source of {subtree.name} did not answer within "
                      f"{self.timeout_s}s (limits.request_timeout_s)")
