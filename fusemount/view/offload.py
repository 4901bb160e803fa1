"""Backing calls that may block leave the trio thread (SPEC 6; issues 7 and 12).

The daemon serves every request on one trio thread: a backing call that sleeps in the
kernel would stall every subtree and the control files. SPEC 6 wants one slow or stuck
call to delay only the requests that wait for it. Which calls may block, and where they run:

- The hot metadata path (lookup, getattr, readdir's stats, access, xattrs, mkdir, unlink,
  rename, ...) runs inline. On a local filesystem these answer in microseconds, and a thread
  hop costs ~80 us, which would double their cost. The watchdog below covers a slow one.
- open and create may wait for a file lease to be broken (up to
  /proc/sys/fs/lease-break-time, 45 s by default). They run inline with O_NONBLOCK added: a
  lease conflict then fails at once with EWOULDBLOCK (the kernel has started the break) and
  the open is retried without O_NONBLOCK in a worker, whose deadline is at least the lease
  break time. A caller who asked for O_NONBLOCK gets EWOULDBLOCK, as natively; for one who
  did not, the flag is cleared again on the new descriptor.
- fsync, fdatasync, fsyncdir and fallocate always run in a worker: `_io(..., blocking=True)`.
  So do writes on a handle opened O_SYNC or O_DSYNC, each of which is an fsync, truncation
  by name (it opens for writing: a lease), and what may free many blocks: truncating or
  opening O_TRUNC a file of over a MiB, and the last close of such a file once unlinked
  (handles.LARGE_BLOCKS; freeing a fragmented file's extents takes seconds).
- Reads run inline with preadv2(RWF_NOWAIT), which answers from the page cache or fails with
  EAGAIN instead of waiting for the disk; then the read (or the rest of a partial one) runs
  in a worker. A filesystem without RWF_NOWAIT (EOPNOTSUPP) reads inline, under the watchdog.
  Buffered writes stay inline: they wait for no disk, only for dirty-page throttling.
- Sources that may stall (network and FUSE filesystems, may_stall) run every call in a
  worker, with the deadline `limits.request_timeout_s`.
- Watchdog: every inline call is timed. One that took longer than SLOW_INLINE_S puts its
  subtree in offloaded mode for OFFLOAD_FOR_S: every call of that subtree then runs in a
  worker, and the mode lapses by itself at the end of the period.

Workers are bounded: a worker takes one slot of the whole view (THREADS_TOTAL) and one of
either its user or its subtree. A call made for a non-admin user on a local source takes a
slot of that user (THREADS_PER_USER): a user who makes her own calls block (a lease on her
file, fsyncs of her own dirty files) ties up only her own slots, never those other users of
the same subtree need. Other calls, and every call on a source that may stall, take a slot
of their subtree (THREADS_PER_SUBTREE): a dead server ties up that subtree's threads only.
A request that needs a slot waits for one without blocking anything else.
Credentials are per thread: each backing function that acts as the caller switches them
itself (creds.as_caller) in whichever thread runs it, with no await between switch and
restore.

A thread that misses its deadline is abandoned, not killed (a blocked syscall cannot be
interrupted); it keeps its slots until it really ends. It never sees our descriptors: it
works on duplicates that it closes itself, and descriptors it creates after being abandoned
are closed by whichever side sees the result last. The subtree is then reported
`"health": "stalled"` until a call succeeds again.
Known gaps, inline on local sources and covered only by the watchdog: re-opening an evicted
inode (open_by_handle_at, inodes.py), freeing a large file whose last reference goes when
the kernel forgets it or when the daemon had already closed its descriptor (then unlinkat
or a replacing rename frees it inline), and large directory listings.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, TypeVarTuple, cast, overload

import trio

from fusemount.view.live import LiveSubtree

log = logging.getLogger(__name__)

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

THREADS_PER_SUBTREE = 4
THREADS_PER_USER = 4
THREADS_TOTAL = 64  # far above THREADS_PER_USER: one user cannot fill it
SLOW_INLINE_S = 0.1  # an inline call this slow already froze every request for its duration
OFFLOAD_FOR_S = 10.0
_LEASE_BREAK_TIME = "/proc/sys/fs/lease-break-time"
_LEASE_MARGIN_S = 5.0
_SLOW_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs",
    "fuse", "fuseblk",
})


def may_stall(fstype: str) -> bool:
    """Whether a source's filesystem can block for long (network or userspace)."""
    return fstype in _SLOW_FSTYPES or fstype.startswith("fuse.")


def lease_break_s() -> float:
    """How long the kernel lets a lease holder take before it breaks the lease itself."""
    try:
        with open(_LEASE_BREAK_TIME, "rb") as f:
            return float(f.read())
    except (OSError, ValueError):
        return 45.0


class _Job:
    """Hand-off between the trio side and a worker thread that may be abandoned."""

    __slots__ = ("abandoned", "done", "lock", "result", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False  # the thread owns the duplicates from then on
        self.abandoned = False
        self.done = False
        self.result: object = None

    def abandon(self, dups: Iterable[int]) -> object:
        """Give up on the call; returns its result if it had one. Closes the duplicates
        of a call that never started (cancelled while waiting for a slot)."""
        with self.lock:
            self.abandoned = True
            if not self.started:
                _close_all(dups)
            return self.result if self.done else None


class _Slots:
    """A slot of several CapacityLimiters at once, as one limiter for trio.to_thread.

    to_thread takes one limiter and releases it only when the thread really ends (even
    abandoned), which is what keeps an abandoned call counted; this presents the subtree's
    and the view's limiters as that one. Acquired always in the same order: no deadlock.
    """

    __slots__ = ("_limiters",)

    def __init__(self, *limiters: trio.CapacityLimiter) -> None:
        self._limiters = limiters

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        taken: list[trio.CapacityLimiter] = []
        try:
            for limiter in self._limiters:
                await limiter.acquire_on_behalf_of(borrower)
                taken.append(limiter)
        except BaseException:
            for limiter in reversed(taken):
                limiter.release_on_behalf_of(borrower)
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        for limiter in reversed(self._limiters):
            limiter.release_on_behalf_of(borrower)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Offloader:
    """Runs backing calls inline (timed) or in bounded, deadline-bound worker threads."""

    def __init__(self, timeout_s: float, threads_total: int = THREADS_TOTAL) -> None:
        self.timeout_s = timeout_s
        self._threads_total = threads_total
        self._total: trio.CapacityLimiter | None = None
        # One per uid that ever needed a worker: bounded by the system's real users.
        self._by_user: dict[int, trio.CapacityLimiter] = {}
        # Inline reads land here, then are copied out: a fresh zeroed buffer per read costs
        # more than the read itself for large requests. Only the trio thread uses it.
        self._buf = memoryview(bytearray(1 << 17))

    # --- where a call runs -------------------------------------------------------------

    def offloaded(self, subtree: LiveSubtree) -> bool:
        """Whether every call of subtree goes to a worker (may stall, or the watchdog said so)."""
        if subtree.offload:
            return True
        if subtree.offload_until:
            if time.monotonic() < subtree.offload_until:
                return True
            subtree.offload_until = 0.0
            log.info("subtree %s: back to inline calls", subtree.name)
        return False

    # fn(*fds, *args) typed: the descriptors come first, as a tuple of 0 to 2, then the
    # arguments (a TypeVarTuple: ParamSpec allows no keyword-only extras after P.args).
    @overload
    async def run(self, subtree: LiveSubtree, fn: Callable[[*Ts], R], fds: tuple[()],
                  *args: *Ts, new_fds: Callable[[R], Iterable[int]] | None = None,
                  blocking: bool = False, user: int | None = None) -> R: ...

    @overload
    async def run(self, subtree: LiveSubtree, fn: Callable[[int, *Ts], R],
                  fds: tuple[int], *args: *Ts,
                  new_fds: Callable[[R], Iterable[int]] | None = None,
                  blocking: bool = False, user: int | None = None) -> R: ...

    @overload
    async def run(self, subtree: LiveSubtree, fn: Callable[[int, int, *Ts], R],
                  fds: tuple[int, int], *args: *Ts,
                  new_fds: Callable[[R], Iterable[int]] | None = None,
                  blocking: bool = False, user: int | None = None) -> R: ...

    async def run(self, subtree: LiveSubtree, fn: Callable[..., R], fds: tuple[int, ...],
                  *args: object, new_fds: Callable[[R], Iterable[int]] | None = None,
                  blocking: bool = False, user: int | None = None) -> R:
        """fn(*fds, *args), inline or in a bounded worker thread (the module doc says which).

        blocking=True for a call that may sleep in the kernel whatever the source (fsync,
        fallocate, truncate): always a worker. user: the non-admin uid the call is made for
        (handles.user_of(fh), or the caller's), whose worker slots it takes; None for an
        admin or when unknown. new_fds names the descriptors fn creates, so a call abandoned
        at its deadline leaks none. Backing functions that act as the caller switch
        credentials themselves, in whichever thread runs them.
        """
        # The first test is the hot path's only cost for a local subtree in inline mode.
        if (blocking or subtree.offload or subtree.offload_until) and (
                blocking or self.offloaded(subtree)):
            return await self.call(subtree, fn, fds, *args, new_fds=new_fds, user=user)
        return self.inline(subtree, fn, fds, *args)

    def inline(self, subtree: LiveSubtree, fn: Callable[..., R], fds: Sequence[int],
               *args: object) -> R:
        """fn(*fds, *args) on the trio thread, timed by the watchdog."""
        started = time.monotonic()
        try:
            return fn(*fds, *args)
        finally:
            took = time.monotonic() - started
            if took > SLOW_INLINE_S:
                self.slow(subtree, took)

    def slow(self, subtree: LiveSubtree, took: float) -> None:
        """The watchdog: a subtree whose inline call was slow runs in workers for a while."""
        if not subtree.offload_until:
            log.info("subtree %s: an inline call took %.3f s; its calls run in worker "
                     "threads for %g s", subtree.name, took, OFFLOAD_FOR_S)
        subtree.offload_until = time.monotonic() + OFFLOAD_FOR_S

    # --- calls that may block ----------------------------------------------------------

    async def open(self, subtree: LiveSubtree, fn: Callable[..., R], fds: Sequence[int],
                   flags: int, *args: object, new_fds: Callable[[R], Iterable[int]],
                   opened: Callable[[R], int], blocking: bool = False,
                   user: int | None = None) -> R:
        """fn(*fds, flags, *args), an open that may wait for a lease break (module doc).

        opened(result) is the open descriptor whose O_NONBLOCK is put back as asked.
        blocking=True sends it to a worker at once (O_TRUNC of a large file frees blocks).
        user: the non-admin uid it is made for (its worker slots), None for an admin.
        """
        if self.offloaded(subtree):
            return await self.call(subtree, fn, fds, flags, *args, new_fds=new_fds, user=user)
        if blocking:
            return await self.call(subtree, fn, fds, flags, *args, new_fds=new_fds, user=user,
                                   timeout_s=max(self.timeout_s, lease_break_s() + _LEASE_MARGIN_S))
        try:
            result = self.inline(subtree, fn, fds, flags | os.O_NONBLOCK, *args)
        except BlockingIOError:
            if flags & os.O_NONBLOCK:
                raise  # the caller's own choice: EWOULDBLOCK while the lease breaks
            timeout = max(self.timeout_s, lease_break_s() + _LEASE_MARGIN_S)
            return await self.call(subtree, fn, fds, flags, *args, new_fds=new_fds,
                                   timeout_s=timeout, user=user)
        if not flags & os.O_NONBLOCK:
            fd = opened(result)
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            except BaseException:
                _close_all(new_fds(result))
                raise
        return result

    async def read(self, subtree: LiveSubtree, fd: int, size: int, off: int,
                   user: int | None = None) -> bytes:
        """pread, from the page cache inline, else in a worker (module doc)."""
        if self.offloaded(subtree):
            return await self.call(subtree, os.pread, (fd,), size, off, user=user)
        if not subtree.nowait_reads:
            return self.inline(subtree, os.pread, (fd,), size, off)
        if len(self._buf) < size:
            self._buf = memoryview(bytearray(size))
        buf = self._buf[:size]
        try:
            got = os.preadv(fd, (buf,), off, os.RWF_NOWAIT)
        except BlockingIOError:
            return await self.call(subtree, os.pread, (fd,), size, off, user=user)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            subtree.nowait_reads = False
            return self.inline(subtree, os.pread, (fd,), size, off)
        data = bytes(buf if got == size else buf[:got])  # copied out before any await
        # A short read is EOF to the kernel: finish one that stopped at uncached pages.
        if 0 < got < size and off + got < os.fstat(fd).st_size:
            data += await self.call(subtree, os.pread, (fd,), size - got, off + got, user=user)
        return data

    async def close(self, subtree: LiveSubtree, fds: Sequence[int]) -> None:
        """Close fds in a worker, for a close that may free a large file's blocks.

        No deadline: the descriptors are ours and must be closed, however long it takes.
        """
        slots = self._slots(subtree, None)
        await trio.to_thread.run_sync(_close_all, fds, limiter=slots)

    def _slots(self, subtree: LiveSubtree, user: int | None) -> trio.CapacityLimiter:
        """The view's limiter and the user's or the subtree's, as one (module doc)."""
        if self._total is None:
            self._total = trio.CapacityLimiter(self._threads_total)
        if user is not None and not subtree.offload:
            own = self._by_user.get(user)
            if own is None:
                own = self._by_user[user] = trio.CapacityLimiter(THREADS_PER_USER)
        else:
            if subtree.limiter is None:
                subtree.limiter = trio.CapacityLimiter(THREADS_PER_SUBTREE)
            own = subtree.limiter
        # to_thread only calls acquire_on_behalf_of/release_on_behalf_of (see _Slots).
        return cast(trio.CapacityLimiter, _Slots(own, self._total))

    async def call(
        self,
        subtree: LiveSubtree,
        fn: Callable[..., R],
        fds: Sequence[int],
        *args: object,
        new_fds: Callable[[R], Iterable[int]] | None = None,
        timeout_s: float | None = None,
        user: int | None = None,
    ) -> R:
        """fn(*duplicates of fds, *args) in a worker thread; EIO after the deadline.

        new_fds tells which descriptors fn's result creates, so an abandoned result's
        descriptors are closed instead of leaked. timeout_s overrides the deadline. user:
        the non-admin uid the call is made for, whose worker slots it takes (module doc).
        """
        slots = self._slots(subtree, user)
        deadline_s = self.timeout_s if timeout_s is None else timeout_s
        dups = [os.dup(fd) for fd in fds]
        job = _Job()

        def work() -> R:
            with job.lock:
                if job.abandoned:
                    raise OSError(errno.EIO, "abandoned before it started")
                job.started = True
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

        with trio.move_on_after(deadline_s):
            try:
                result = await trio.to_thread.run_sync(
                    work, limiter=slots, abandon_on_cancel=True)
            except BaseException:
                if not job.done:
                    # Never started, or failed: the thread holds nothing of ours.
                    job.abandon(dups)
                raise
            subtree.stalled_since = None
            return result
        late = job.abandon(dups)
        if late is not None and new_fds is not None:
            _close_all(new_fds(cast(R, late)))
        if subtree.stalled_since is None:
            subtree.stalled_since = trio.current_time()
        raise OSError(errno.EIO, f"source of {subtree.name} did not answer within "
                      f"{deadline_s}s (limits.request_timeout_s)")
