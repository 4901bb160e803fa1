"""Open files and directories: fh numbers, their descriptors, `max_open_files` (SPEC 6).

A handle pins its node (its descriptor is never evicted while open) and counts against
its subtree's open files, which is what makes `detach` EBUSY and keeps a force-detached
source alive until the last close.
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

MAX_CONTROL_HANDLES_PER_UID = 256


class HandleTable:
    def __init__(self, inodes: InodeTable, max_open_files: int) -> None:
        self.inodes = inodes
        self.max_open_files = max_open_files
        self._by_fh: dict[int, Handle] = {}
        self._next_fh = 1
        self._data = 0  # file and directory handles: what max_open_files caps (SPEC 6)
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

    def _reserve(self) -> int:
        self.check_room()
        self._data += 1
        return self._next()

    def check_room(self) -> None:
        """Raise ENFILE before doing work that would need a data handle."""
        if self._data >= self.max_open_files:
            raise OSError(errno.ENFILE,
                          f"open file limit reached (max_open_files={self.max_open_files})")

    def add_file(self, node: Node, fd: int, writable: bool, caller: Caller) -> FileHandle:
        try:
            fh = self._reserve()
        except OSError:
            os.close(fd)
            raise
        handle = FileHandle(fh, node, fd, writable, caller)
        self._attach(node, handle)
        return handle

    def add_dir(self, node: Node, fd: int, caller: Caller) -> DirHandle:
        try:
            fh = self._reserve()
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

    def control(self, fh: int) -> ControlHandle:
        found = self._by_fh.get(fh)
        if not isinstance(found, ControlHandle):
            raise OSError(errno.EBADF, "not a control file")
        return found

    def release(self, fh: int) -> None:
        handle = self._by_fh.pop(fh, None)
        if handle is None:
            return
        if isinstance(handle, ControlHandle):
            uid = handle.caller.uid
            left = self._control_by_uid[uid] - 1
            if left:
                self._control_by_uid[uid] = left
            else:
                del self._control_by_uid[uid]
            return
        self._data -= 1
        node = handle.node
        # An open file unlinked meanwhile: let its space go with this last close, as natively,
        # instead of keeping it until the kernel forgets the inode.
        unlinked = (isinstance(handle, FileHandle) and node.pins == 1
                    and os.fstat(handle.fd).st_nlink == 0)
        os.close(handle.fd)
        subtree = node.subtree
        subtree.open_files -= 1
        self.inodes.unpin(node)
        if unlinked:
            self.inodes.release_fd(node)
        if subtree.detached and subtree.open_files == 0:
            self.on_last_close.append(subtree)

    def close_all(self) -> None:
        for handle in self._by_fh.values():
            if not isinstance(handle, ControlHandle):
                with contextlib.suppress(OSError):
                    os.close(handle.fd)
        self._by_fh.clear()
        self._data = 0
        self._control_by_uid.clear()
