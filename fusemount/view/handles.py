"""Open files and directories: fh numbers, their descriptors, the open-file caps (SPEC 6).

A handle pins its node (its descriptor is never evicted while open) and counts against
its subtree's open files, which is what makes `detach` EBUSY and keeps a force-detached
source alive until the last close.

Caps on file and directory handles: `max_open_files` for the whole view (ENFILE), and for
each non-admin uid `max_open_files_per_user` (EMFILE). Admins are not capped per user, and
the last eighth of max_open_files (ADMIN_RESERVE_DIVISOR) is kept for them: non-admins
together get ENFILE when only that reserve is left, so however many users flood the view,
an admin can still open files (and ctl, whose handles have their own budget per uid).
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field

from fusemount.core.records import Caller
from fusemount.view.inodes import InodeTable, Node
from fusemount.view.live import LiveSubtree


@dataclass(slots=True, eq=False)
class FileHandle:
    fh: int
    node: Node
    fd: int
    writable: bool
    # The opener: write/read handlers get no RequestContext, and a write must spend the
    # opener's disk allowance, not root's (SPEC 6).
    caller: Caller
    sync: bool = False  # opened O_SYNC or O_DSYNC: every write waits for the disk


@dataclass(slots=True, eq=False)
class DirHandle:
    fh: int
    node: Node
    fd: int
    caller: Caller
    # Listing state, a few KiB whatever the directory's size (SPEC 6): entries stream from
    # the descriptor, and the offsets the kernel sees are the filesystem's own d_off
    # cookies, so it resumes (and seekdir lands) exactly as natively.
    at: int = 0  # offset of the entry at buf[cursor]; where fd stands once buf is used up
    buf: bytes = b""  # one getdents64 result, not yet all given to the kernel
    cursor: int = 0


@dataclass(slots=True, eq=False)
class ControlHandle:
    """An open control file: per-open content snapshot or the last ctl reply (SPEC 4)."""

    fh: int
    ino: int
    caller: Caller
    content: bytes = b""
    cursor: int = 0  # ctl only: how much of the reply has been read
    entries: list[tuple[bytes, int]] = field(default_factory=list)  # control-dir listing


Handle = FileHandle | DirHandle | ControlHandle
LaterClose = tuple[LiveSubtree, tuple[int, ...]]  # descriptors to close in a worker thread

MAX_CONTROL_HANDLES_PER_UID = 256
ADMIN_RESERVE_DIVISOR = 8  # max_open_files // 8 slots only admins may take
# Unlinked files above this many 512-byte blocks (1 MiB) are closed in a worker thread:
# freeing a small file's few extents takes microseconds, a large fragmented one's seconds.
LARGE_BLOCKS = 2048


class HandleTable:
    def __init__(self, inodes: InodeTable, max_open_files: int,
                 max_open_files_per_user: int = 1024) -> None:
        self.inodes = inodes
        self.max_open_files = max_open_files
        self.max_per_user = max_open_files_per_user
        self.admin_reserve = max_open_files // ADMIN_RESERVE_DIVISOR
        self._by_fh: dict[int, Handle] = {}
        self._next_fh = 1
        self._data = 0  # file and directory handles: what max_open_files caps (SPEC 6)
        self._by_user: dict[int, int] = {}  # non-admin uid -> its data handles
        self._user_of: dict[int, int] = {}  # fh -> the non-admin uid it counts against
        # Control-file handles have their own budget per uid, so that nobody can lock the
        # admins out of ctl by holding every data slot, nor exhaust memory with opens.
        self._control_by_uid: dict[int, int] = {}
        self.on_last_close: list[LiveSubtree] = []  # detached subtrees now free to close

    def __len__(self) -> int:
        return self._data

    def count_data(self) -> int:
        return self._data

    def _next(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _reserve(self, user: int | None) -> int:
        self.check_room(user)
        self._data += 1
        fh = self._next()
        if user is not None:
            self._by_user[user] = self._by_user.get(user, 0) + 1
            self._user_of[fh] = user
        return fh

    def check_room(self, user: int | None = None) -> None:
        """Raise ENFILE or EMFILE before doing work that would need a data handle.

        user: the non-admin uid the handle would count against; None for an admin.
        """
        if self._data >= self.max_open_files:
            raise OSError(errno.ENFILE,
                          f"open file limit reached (max_open_files={self.max_open_files})")
        if user is None:
            return
        if self._data >= self.max_open_files - self.admin_reserve:
            raise OSError(errno.ENFILE, "open file limit reached: the last "
                          f"{self.admin_reserve} of max_open_files={self.max_open_files} "
                          "are kept for admins")
        if self._by_user.get(user, 0) >= self.max_per_user:
            raise OSError(errno.EMFILE, "open file limit of this user reached "
                          f"(max_open_files_per_user={self.max_per_user})")

    def set_limits(self, max_open_files: int, max_open_files_per_user: int) -> None:
        """New caps (a reload): handles already open stay; only new opens are judged."""
        self.max_open_files = max_open_files
        self.max_per_user = max_open_files_per_user
        self.admin_reserve = max_open_files // ADMIN_RESERVE_DIVISOR

    def user_of(self, fh: int) -> int | None:
        """The non-admin uid an open file counts against; None for an admin's."""
        return self._user_of.get(fh)

    def count_user(self, uid: int) -> int:
        """Data handles counted against a non-admin uid."""
        return self._by_user.get(uid, 0)

    def add_file(self, node: Node, fd: int, writable: bool, caller: Caller,
                 user: int | None = None, *, sync: bool = False) -> FileHandle:
        try:
            fh = self._reserve(user)
        except OSError:
            os.close(fd)
            raise
        handle = FileHandle(fh, node, fd, writable, caller, sync=sync)
        self._attach(node, handle)
        return handle

    def add_dir(self, node: Node, fd: int, caller: Caller, user: int | None = None,
                ) -> DirHandle:
        try:
            fh = self._reserve(user)
        except OSError:
            os.close(fd)
            raise
        handle = DirHandle(fh, node, fd, caller)
        self._attach(node, handle)
        return handle

    def add_control(self, ino: int, caller: Caller, content: bytes = b"") -> ControlHandle:
        held = self._control_by_uid.get(caller.uid, 0)
        if held >= MAX_CONTROL_HANDLES_PER_UID and caller.uid != 0:
            raise OSError(errno.ENFILE, "too many open control files for this user "
                          f"({MAX_CONTROL_HANDLES_PER_UID})")
        self._control_by_uid[caller.uid] = held + 1
        handle = ControlHandle(self._next(), ino, caller, content)
        self._by_fh[handle.fh] = handle
        return handle

    def _attach(self, node: Node, handle: FileHandle | DirHandle) -> None:
        self._by_fh[handle.fh] = handle
        self.inodes.pin(node)
        node.subtree.open_files += 1

    def get(self, fh: int) -> Handle:
        found = self._by_fh.get(fh)
        if found is None:
            raise OSError(errno.EBADF, "unknown file handle")
        return found

    def file(self, fh: int) -> FileHandle:
        found = self._by_fh.get(fh)
        if not isinstance(found, FileHandle):
            raise OSError(errno.EBADF, "not an open file")
        return found

    def is_control(self, fh: int) -> bool:
        """Whether fh is an open control file or directory (ops.py routes by it): one look-up,
        False for an unknown fh, whose handler then answers EBADF."""
        return type(self._by_fh.get(fh)) is ControlHandle

    def control(self, fh: int) -> ControlHandle:
        found = self._by_fh.get(fh)
        if not isinstance(found, ControlHandle):
            raise OSError(errno.EBADF, "not a control file")
        return found

    def release(self, fh: int) -> LaterClose | None:
        """Forget fh and close its descriptor, or return it for the caller to close in a
        worker thread: the last references of a large unlinked file, whose close frees its
        blocks (seconds for a big fragmented one, offload.py)."""
        handle = self._by_fh.pop(fh, None)
        if handle is None:
            return None
        if isinstance(handle, ControlHandle):
            uid = handle.caller.uid
            left = self._control_by_uid[uid] - 1
            if left:
                self._control_by_uid[uid] = left
            else:
                del self._control_by_uid[uid]
            return None
        self._data -= 1
        user = self._user_of.pop(fh, None)
        if user is not None:
            left = self._by_user[user] - 1
            if left:
                self._by_user[user] = left
            else:
                del self._by_user[user]
        node = handle.node
        # An open file unlinked meanwhile: let its space go with this last close, as natively,
        # instead of keeping it until the kernel forgets the inode.
        st = os.fstat(handle.fd) if isinstance(handle, FileHandle) and node.pins == 1 else None
        unlinked = st is not None and st.st_nlink == 0
        later = None
        if st is not None and unlinked and st.st_blocks > LARGE_BLOCKS and node.fd >= 0:
            later = (node.subtree, (handle.fd, os.dup(node.fd)))  # outlives release_fd's close
        else:
            os.close(handle.fd)
        subtree = node.subtree
        subtree.open_files -= 1
        self.inodes.unpin(node)
        if unlinked:
            self.inodes.release_fd(node)
        if subtree.detached and subtree.open_files == 0:
            self.on_last_close.append(subtree)
        return later

    def close_all(self) -> None:
        for handle in self._by_fh.values():
            if not isinstance(handle, ControlHandle):
                with contextlib.suppress(OSError):
                    os.close(handle.fd)
        self._by_fh.clear()
        self._data = 0
        self._by_user.clear()
        self._user_of.clear()
        self._control_by_uid.clear()
