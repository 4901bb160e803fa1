"""The pyfuse3 Operations: a router over the control files and the subtree operations
(SPEC 3, 4, 5).

Each handler routes once, at its top, by the inode or file handle the kernel names: the
root, `.fusemount/` and their open files go to ctlfiles.ControlFiles, everything else to
the subtree side (subtree.SubtreeOps, with its xattrs.XattrOps and ranges.RangeOps parts),
which therefore never sees a control object. A rename or link with one end on each side is
the only request that looks at two inodes.

Hot path: a handler here is a plain `def` that returns the chosen side's coroutine, which
fuse_handler awaits; routing costs one int comparison (inode) or one dict look-up (file
handle) and no await or coroutine of its own.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Sequence

import pyfuse3
from pyfuse3 import (
    EntryAttributes,
    FileHandleT,
    FileInfo,
    FileNameT,
    FlagT,
    InodeT,
    ModeT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    XAttrNameT,
)
from typing_extensions import override

from fusemount.view.context import ViewContext
from fusemount.view.ctlfiles import ControlFiles, is_control
from fusemount.view.errors import RequestObserver, fuse_handler
from fusemount.view.offload import Offloader
from fusemount.view.ranges import RangeOps
from fusemount.view.registry import Registry
from fusemount.view.subtree import SubtreeOps
from fusemount.view.xattrs import XattrOps

log = logging.getLogger(__name__)


class Ops(pyfuse3.Operations):
    """The one Operations instance pyfuse3 sees: routes each request to its side."""

    supports_dot_lookup = False  # no export support: the kernel never asks for `..`
    enable_acl = True  # backing POSIX ACLs apply to callers, checked by the kernel
    enable_writeback_cache = False

    def __init__(self, ctx: ViewContext, registry: Registry | None = None,
                 control: ControlFiles | None = None,
                 offloader: Offloader | None = None,
                 observer: RequestObserver | None = None) -> None:
        """The daemon passes all collaborators; a test may let the view make its own."""
        super().__init__()
        self.ctx = ctx
        self.observer = observer  # told of every answered request (errors.fuse_handler)
        self.handles = ctx.handles
        offloader = offloader or Offloader(ctx.config.limits.request_timeout_s)
        self.subtree = SubtreeOps(ctx, registry or Registry(ctx), offloader)
        self.xattrs = XattrOps(self.subtree)
        self.ranges = RangeOps(self.subtree)
        self.control = control or ControlFiles(ctx, offloader.run)
        self.inodes = ctx.inodes
        self.offloader = offloader

    # Cache timeouts live on the subtree side, which fills in attributes; a reload sets them.
    @property
    def entry_timeout(self) -> float:
        return self.subtree.entry_timeout

    @entry_timeout.setter
    def entry_timeout(self, seconds: float) -> None:
        self.subtree.entry_timeout = seconds

    @property
    def attr_timeout(self) -> float:
        return self.subtree.attr_timeout

    @attr_timeout.setter
    def attr_timeout(self, seconds: float) -> None:
        self.subtree.attr_timeout = seconds

    def housekeeping(self) -> None:
        """Once a second: keep the inode table within its cap even when no lookup comes."""
        self.subtree.housekeeping()

    # --- lookups and attributes -----------------------------------------------------------

    @override
    @fuse_handler
    def lookup(self, parent_inode: InodeT, name: FileNameT,
               ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(parent_inode):
            return self.control.lookup(parent_inode, name, ctx)
        return self.subtree.lookup(parent_inode, name, ctx)

    @override
    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        # Must not raise: pyfuse3 has no reply for forget.
        for ino, nlookup in inode_list:
            try:
                if is_control(ino):
                    self.control.forget(ino, nlookup)
                else:
                    self.subtree.forget(ino, nlookup)
            except Exception:
                log.exception("forget(%d, %d) failed", ino, nlookup)
        self.subtree.forgotten()

    @override
    @fuse_handler
    def getattr(self, inode: InodeT, ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(inode):
            return self.control.getattr(inode, ctx)
        return self.subtree.getattr(inode, ctx)

    @override
    @fuse_handler
    def setattr(self, inode: InodeT, attr: EntryAttributes, fields: SetattrFields,
                fh: FileHandleT | None, ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(inode):
            return self.control.setattr(inode, fields, ctx)
        return self.subtree.setattr(inode, attr, fields, fh, ctx)

    @override
    @fuse_handler
    def readlink(self, inode: InodeT, ctx: RequestContext) -> Awaitable[FileNameT]:
        if is_control(inode):
            return self.control.readlink(inode)
        return self.subtree.readlink(inode, ctx)

    @override
    @fuse_handler
    def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> Awaitable[bool]:
        if is_control(inode):
            return self.control.access(inode)
        return self.subtree.access(inode, mode, ctx)

    @override
    @fuse_handler
    def statfs(self, ctx: RequestContext) -> Awaitable[StatvfsData]:
        # Only reached with an unpatched pyfuse3: statfs_inode answers otherwise.
        return self.control.statfs(ctx)

    @override
    @fuse_handler
    def statfs_inode(self, inode: InodeT, ctx: RequestContext) -> Awaitable[StatvfsData]:
        if is_control(inode):
            return self.control.statfs(ctx)
        return self.ranges.statfs_inode(inode, ctx)

    # --- creating and removing names --------------------------------------------------------

    @override
    @fuse_handler
    def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
              ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.mkdir(parent_inode, name, mode, ctx)

    @override
    @fuse_handler
    def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
              ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.mknod(parent_inode, name, mode, rdev, ctx)

    @override
    @fuse_handler
    def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.symlink(parent_inode, name, target, ctx)

    @override
    @fuse_handler
    def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
             ctx: RequestContext) -> Awaitable[EntryAttributes]:
        if is_control(new_parent_inode):
            return self.control.refuse_change()
        if is_control(inode):
            return self.subtree.refuse_across(new_parent_inode, new_name, ctx, errno.EXDEV,
                                              "control files stay in .fusemount")
        return self.subtree.link(inode, new_parent_inode, new_name, ctx)

    @override
    @fuse_handler
    def unlink(self, parent_inode: InodeT, name: FileNameT,
               ctx: RequestContext) -> Awaitable[None]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.unlink(parent_inode, name, ctx)

    @override
    @fuse_handler
    def rmdir(self, parent_inode: InodeT, name: FileNameT,
              ctx: RequestContext) -> Awaitable[None]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.rmdir(parent_inode, name, ctx)

    @override
    @fuse_handler
    def rename(self, parent_inode_old: InodeT, name_old: FileNameT,
               parent_inode_new: InodeT, name_new: FileNameT, flags: FlagT,
               ctx: RequestContext) -> Awaitable[None]:
        if is_control(parent_inode_old):
            return self.control.refuse_change()
        if is_control(parent_inode_new):
            return self.subtree.refuse_across(parent_inode_old, name_old, ctx, errno.EACCES,
                                              "the root and .fusemount are immutable (SPEC 3)")
        return self.subtree.rename(parent_inode_old, name_old, parent_inode_new, name_new,
                                   flags, ctx)

    # --- files ------------------------------------------------------------------------------

    @override
    @fuse_handler
    def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> Awaitable[FileInfo]:
        if is_control(inode):
            return self.control.open(inode, flags, ctx)
        return self.subtree.open(inode, flags, ctx)

    @override
    @fuse_handler
    def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
               ctx: RequestContext) -> Awaitable[tuple[FileInfo, EntryAttributes]]:
        if is_control(parent_inode):
            return self.control.refuse_change()
        return self.subtree.create(parent_inode, name, mode, flags, ctx)

    @override
    @fuse_handler
    def read(self, fh: FileHandleT, off: int, size: int) -> Awaitable[bytes]:
        if self.handles.is_control(fh):
            return self.control.read(fh, off, size)
        return self.subtree.read(fh, off, size)

    @override
    @fuse_handler
    def write(self, fh: FileHandleT, off: int, buf: bytes) -> Awaitable[int]:
        if self.handles.is_control(fh):
            return self.control.write(fh, buf)
        return self.subtree.write(fh, off, buf)

    @override
    async def flush(self, fh: FileHandleT) -> None:
        # ENOSYS once: the kernel then stops sending FLUSH on every close(), which saves a
        # round trip per file. Sources are local filesystems that report write errors at
        # write() or fsync(), not at close(); locks are kernel-local (pyfuse3 has no lock ops).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @override
    @fuse_handler
    def release(self, fh: FileHandleT) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.release(fh)
        return self.subtree.release(fh)

    @override
    @fuse_handler
    def fsync(self, fh: FileHandleT, datasync: bool) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.fsync()
        return self.subtree.fsync(fh, datasync)

    # --- directories ------------------------------------------------------------------------

    @override
    @fuse_handler
    def opendir(self, inode: InodeT, ctx: RequestContext) -> Awaitable[FileHandleT]:
        if is_control(inode):
            return self.control.opendir(inode, ctx)
        return self.subtree.opendir(inode, ctx)

    @override
    @fuse_handler
    def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.readdir(fh, start_id, token)
        return self.subtree.readdir(fh, start_id, token)

    @override
    @fuse_handler
    def releasedir(self, fh: FileHandleT) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.release(fh)
        return self.subtree.releasedir(fh)

    @override
    @fuse_handler
    def fsyncdir(self, fh: FileHandleT, datasync: bool) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.fsync()
        return self.subtree.fsyncdir(fh, datasync)

    # --- extended attributes ----------------------------------------------------------------

    @override
    @fuse_handler
    def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> Awaitable[bytes]:
        if is_control(inode):
            return self.control.getxattr(name)
        return self.xattrs.getxattr(inode, name, ctx)

    @override
    @fuse_handler
    def listxattr(self, inode: InodeT, ctx: RequestContext) -> Awaitable[Sequence[XAttrNameT]]:
        if is_control(inode):
            return self.control.listxattr()
        return self.xattrs.listxattr(inode, ctx)

    @override
    @fuse_handler
    def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes,
                 ctx: RequestContext) -> Awaitable[None]:
        if is_control(inode):
            return self.control.refuse_xattr_change()
        return self.xattrs.setxattr(inode, name, value, ctx)

    @override
    @fuse_handler
    def removexattr(self, inode: InodeT, name: XAttrNameT,
                    ctx: RequestContext) -> Awaitable[None]:
        if is_control(inode):
            return self.control.refuse_xattr_change()
        return self.xattrs.removexattr(inode, name, ctx)

    # --- ranges (the patched binding: ranges.py) ----------------------------------------------

    @override
    @fuse_handler
    def fallocate(self, fh: FileHandleT, mode: int, off: int, length: int,
                  ctx: RequestContext) -> Awaitable[None]:
        if self.handles.is_control(fh):
            return self.control.refuse_range(errno.EOPNOTSUPP)
        return self.ranges.fallocate(fh, mode, off, length, ctx)

    @override
    @fuse_handler
    def lseek(self, fh: FileHandleT, off: int, whence: int) -> Awaitable[int]:
        if self.handles.is_control(fh):
            return self.control.refuse_range(errno.ENXIO)
        return self.ranges.lseek(fh, off, whence)

    @override
    @fuse_handler
    def copy_file_range(self, fh_in: FileHandleT, off_in: int, fh_out: FileHandleT,
                        off_out: int, length: int, flags: int,
                        ctx: RequestContext) -> Awaitable[int]:
        if self.handles.is_control(fh_in) or self.handles.is_control(fh_out):
            return self.control.refuse_range(errno.EOPNOTSUPP)
        return self.ranges.copy_file_range(fh_in, off_in, fh_out, off_out, length, flags, ctx)
