"""statfs by inode, fallocate, SEEK_DATA/SEEK_HOLE and copy_file_range (SPEC 3, issue 14).

These four reach the daemon only through the patched pyfuse3 (binding/, README "The
binding"); with upstream pyfuse3 the kernel gets ENOSYS for the last three and statfs
falls back to Ops.statfs, the view root's answer, for every path.

What the kernel sends, and what it answers itself:
- statfs names the inode the call was made on: `VIEW/NAME` and everything under it get the
  source's filesystem; the root and `.fusemount` get ViewContext.statfs (README).
- fallocate arrives only with mode 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE or ZERO_RANGE
  (|KEEP_SIZE): fuse refuses collapse and insert range itself with EOPNOTSUPP.
- lseek arrives only for SEEK_DATA and SEEK_HOLE; the kernel answers SEEK_SET/CUR/END.
- copy_file_range arrives for any two files of the view, whatever their subtrees; on
  EOPNOTSUPP or EXDEV the kernel copies through read and write requests instead.
None of them may answer ENOSYS: the kernel would stop sending that request for the rest of
the session (a source lacking an operation answers EOPNOTSUPP instead).
"""

from __future__ import annotations

import errno
import os

from pyfuse3 import FileHandleT, InodeT, RequestContext, StatvfsData
from typing_extensions import override

from fusemount.core.records import Access
from fusemount.host import backing
from fusemount.view import ctlfiles
from fusemount.view.errors import fuse_handler
from fusemount.view.gate import OpsBase
from fusemount.view.handles import ControlHandle, FileHandle


def statvfs_data(st: os.statvfs_result) -> StatvfsData:
    """A source's statvfs as the kernel's FUSE_STATFS reply carries it (no fsid, no flags)."""
    out = StatvfsData()
    out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
    out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
    out.f_files, out.f_ffree, out.f_favail = st.f_files, st.f_ffree, st.f_favail
    out.f_namemax = st.f_namemax
    return out


def _not_enosys(exc: OSError) -> OSError:
    # ENOSYS from a source (a FUSE source without the operation) would switch the operation
    # off for the whole view; for the caller it means the same as EOPNOTSUPP.
    if exc.errno == errno.ENOSYS:
        return OSError(errno.EOPNOTSUPP, "not supported by the source")
    return exc


class RangeOps(OpsBase):
    """Handlers that need the patched binding."""

    @override
    @fuse_handler
    async def statfs_inode(self, inode: InodeT, ctx: RequestContext) -> StatvfsData:
        caller = self.callers.from_ctx(ctx)
        if ctlfiles.is_control(inode):
            return self.ctx.statfs(caller)
        node = self._node(inode)
        # A caller outside the subtree can still name VIEW/NAME (the gate, SPEC 5); it gets
        # the root's answer, which leaves out what it may not see, not the source's sizes.
        if self.ctx.access(caller, node.subtree.spec) is Access.NONE:
            return self.ctx.statfs(caller)
        st = await self._io(node.subtree, backing.statfs, (self.inodes.fd(node),))
        return statvfs_data(st)

    def _open_file(self, fh: int, control_errno: int) -> FileHandle:
        if isinstance(self.handles.get(fh), ControlHandle):
            raise OSError(control_errno, "control files hold no ranges")
        return self.handles.file(fh)

    @override
    @fuse_handler
    async def fallocate(self, fh: FileHandleT, mode: int, off: int, length: int,
                        ctx: RequestContext) -> None:
        handle = self._open_file(fh, errno.EOPNOTSUPP)
        caller = self._enter(ctx, handle.node, write=True)
        try:
            # May allocate or zero gigabytes: a worker, so only its own waiters wait.
            await self._io(handle.node.subtree, backing.fallocate, (handle.fd,), mode, off,
                           length, caller, blocking=True, user=self._charged(ctx))
        except OSError as exc:
            raise _not_enosys(exc) from None

    @override
    @fuse_handler
    async def lseek(self, fh: FileHandleT, off: int, whence: int) -> int:
        # ENXIO: a control file reads as size 0, where both seeks find nothing, as natively.
        handle = self._open_file(fh, errno.ENXIO)
        return await self._io(handle.node.subtree, backing.seek_data, (handle.fd,), off,
                              whence)

    @override
    @fuse_handler
    async def copy_file_range(self, fh_in: FileHandleT, off_in: int, fh_out: FileHandleT,
                              off_out: int, length: int, flags: int,
                              ctx: RequestContext) -> int:
        # EOPNOTSUPP for control files: the kernel then copies with reads and writes, each
        # of which the control files answer as usual.
        src = self._open_file(fh_in, errno.EOPNOTSUPP)
        dst = self._open_file(fh_out, errno.EOPNOTSUPP)
        self._enter(ctx, src.node)
        caller = self._enter(ctx, dst.node, write=True)
        try:
            return await self._io(dst.node.subtree, backing.copy_range, (src.fd, dst.fd),
                                  off_in, off_out, length, flags, caller, blocking=True,
                                  user=self._charged(ctx))
        except OSError as exc:
            raise _not_enosys(exc) from None
