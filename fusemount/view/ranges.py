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

from fusemount.core.records import Access
from fusemount.host import backing
from fusemount.view.gate import Steps


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


class RangeOps:
    """Handlers that need the patched binding, on subtree inodes and files; the control files
    answer for their own (ctlfiles.ControlFiles)."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def statfs_inode(self, inode: InodeT, ctx: RequestContext) -> StatvfsData:
        steps = self.steps
        caller = steps.callers.from_ctx(ctx)
        node = steps._node(inode)
        # A caller outside the subtree can still name VIEW/NAME (the gate, SPEC 5); it gets
        # the root's answer, which leaves out what it may not see, not the source's sizes.
        if steps.ctx.access(caller, node.subtree.spec) is Access.NONE:
            return steps.ctx.statfs(caller)
        st = await steps._io(node.subtree, backing.statfs, (steps.inodes.fd(node),))
        return statvfs_data(st)

    async def fallocate(self, fh: FileHandleT, mode: int, off: int, length: int,
                        ctx: RequestContext) -> None:
        steps = self.steps
        handle = steps.handles.file(fh)
        caller = steps._enter(ctx, handle.node, write=True)
        try:
            # May allocate or zero gigabytes: a worker, so only its own waiters wait.
            await steps._io(handle.node.subtree, backing.fallocate, (handle.fd,), mode, off,
                            length, caller, blocking=True, user=steps._charged(ctx))
        except OSError as exc:
            raise _not_enosys(exc) from None

    async def lseek(self, fh: FileHandleT, off: int, whence: int) -> int:
        handle = self.steps.handles.file(fh)
        return await self.steps._io(handle.node.subtree, backing.seek_data, (handle.fd,), off,
                                    whence)

    async def copy_file_range(self, fh_in: FileHandleT, off_in: int, fh_out: FileHandleT,
                              off_out: int, length: int, flags: int,
                              ctx: RequestContext) -> int:
        steps = self.steps
        src = steps.handles.file(fh_in)
        dst = steps.handles.file(fh_out)
        steps._enter(ctx, src.node)
        caller = steps._enter(ctx, dst.node, write=True)
        try:
            return await steps._io(dst.node.subtree, backing.copy_range, (src.fd, dst.fd),
                                   off_in, off_out, length, flags, caller, blocking=True,
                                   user=steps._charged(ctx))
        except OSError as exc:
            raise _not_enosys(exc) from None
