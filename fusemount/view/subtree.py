"""The subtree operations: translate a request on a subtree inode, check it, delegate,
convert back (SPEC 3, 5).

Each handler reads: who asks, which node, may they, do it, record it. ops.py routes here
only inodes and handles of subtrees (never the root, `.fusemount/` or their open files):
every inode is a Node of a live subtree, reached only through its held descriptor.

Caching (SPEC 5): in gate mode (the default) VIEW/NAME presents its gate's owner, bits and
ACL, so the kernel itself refuses outsiders from its caches and subtree entries in the root
are cached like any other. With `access.hide_names` they are returned with entry_timeout 0,
so every path walk into a subtree asks the daemon, as that caller, whether the subtree exists
for them. Inside a subtree the configured timeouts apply; `set` and `detach` invalidate the
kernel's attributes (and the gate's ACL) of every inode of the subtree, so the next permission
check comes back here.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
import time
from typing import NoReturn

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
)

from fusemount.core.records import Caller
from fusemount.host import backing, syscalls
from fusemount.view.gate import SquashedRoot, Steps, check_name, first_fd, the_fd, two_fds
from fusemount.view.handles import LARGE_BLOCKS, DirHandle, FileHandle
from fusemount.view.inodes import Node
from fusemount.view.live import LiveSubtree

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_DAEMON = Caller(0, 0, 0)
# One getdents64 read per open directory at a time: what an open directory costs in
# memory (SPEC 6), and several READDIRPLUS replies' worth of short names.
_DIR_BUFFER_BYTES = 4096
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC  # every write is an fsync: offload.py runs it in a worker


def _create(parent_fd: int, flags: int, name: bytes, mode: int,
            caller: Caller) -> tuple[int, int, os.stat_result]:
    """backing.create with flags first, as Offloader.open passes them."""
    return backing.create(parent_fd, name, flags, mode, caller)


# The open descriptor in what a backing open returns (Offloader.open fixes its O_NONBLOCK).
def _opened_by_reopen(fd: int) -> int:
    return fd


def _opened_by_create(made: tuple[int, int, os.stat_result]) -> int:
    return made[0]


def _as_squashed(caller: Caller) -> Caller | None:
    """The caller a root-by-default backing call (lookup, link) must run as: only a squashed
    root, whom the kernel let through as root; others were checked by the kernel."""
    return caller if isinstance(caller, SquashedRoot) else None


class SubtreeOps(Steps):
    """The handlers for names, attributes, files and directories of subtrees."""

    # --- lookups and attributes -----------------------------------------------------------

    async def lookup(self, parent_inode: InodeT, name: FileNameT,
                     ctx: RequestContext) -> EntryAttributes:
        check_name(name)
        parent = self._node(parent_inode)
        caller = self._enter(ctx, parent, new_names=True)
        try:
            fd, st = await self._io(parent.subtree, backing.lookup, (self.inodes.fd(parent),),
                                    name, _as_squashed(caller), new_fds=first_fd)
        except FileNotFoundError:
            negative = EntryAttributes()
            negative.st_ino = InodeT(0)  # cached by the kernel as a negative entry
            negative.entry_timeout = self.entry_timeout
            return negative
        node = self.inodes.adopt(parent.subtree, fd, st.st_dev, st.st_ino, parent.ino, name)
        self._trim()
        return self._attrs(node, st)

    def forget(self, ino: InodeT, nlookup: int) -> None:
        self.inodes.forget(ino, nlookup)

    def forgotten(self) -> None:
        """After a batch of forgets: sources whose last node went may close now."""
        self.registry.reap()

    async def getattr(self, inode: InodeT, ctx: RequestContext) -> EntryAttributes:
        node = self._node(inode)
        if not self._is_gate(node):  # anyone may stat a gate (SPEC 5): the kernel asks for
            self._enter(ctx, node)  # it to decide whether to let the caller through
        st = await self._io(node.subtree, backing.getattr_, (self.inodes.fd(node),))
        return self._attrs(node, st)

    async def setattr(self, inode: InodeT, attr: EntryAttributes, fields: SetattrFields,
                      fh: FileHandleT | None, ctx: RequestContext) -> EntryAttributes:
        node = self._node(inode)
        is_gate = self._is_gate(node)
        if is_gate and (fields.update_mode or fields.update_uid or fields.update_gid):
            raise OSError(errno.EPERM, "a subtree's gate changes with `set` (SPEC 5)")
        caller = self._enter(ctx, node, write=True, groups=True)
        subtree = node.subtree
        if is_gate or isinstance(caller, SquashedRoot):
            # The kernel judged the times against the gate (let the source root judge them),
            # or let a squashed root through by capability (nobody must be judged).
            time_caller = caller
        else:
            time_caller = Caller(0, 0, caller.pid)
        # The kernel has already applied setattr_prepare() for the caller (default_permissions:
        # owner-only chmod and explicit times, chown rules, setgid clearing); what remains
        # is done as the caller only where the backing filesystem must judge it too.
        if fields.update_mode:
            current = await self._io(subtree, backing.getattr_, (self.inodes.fd(node),))
            if self.ctx.config.access.deny_special_files:
                # Only bits the file lacks: a kill-priv SETATTR may keep one it has.
                backing.refuse_setid_on_file(attr.st_mode & ~current.st_mode, current.st_mode)
            chmod_as = caller
            if (current.st_uid != caller.uid and not isinstance(caller, SquashedRoot)
                    and backing.kills_privileges(attr.st_mode, current.st_mode)):
                chmod_as = _DAEMON  # a permitted non-owner's write/truncate/chown (SPEC 3)
            await self._io(subtree, backing.chmod, (self.inodes.fd(node),), attr.st_mode,
                           chmod_as)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            await self._io(subtree, backing.chown, (self.inodes.fd(node),), uid, gid, caller)
        if fields.update_size:
            handle = self.handles.get(fh) if fh is not None else None
            if isinstance(handle, FileHandle):
                frees = os.fstat(handle.fd).st_blocks > LARGE_BLOCKS
                await self._io(subtree, backing.truncate_open, (handle.fd,), attr.st_size,
                               caller, blocking=frees, user=self._charged(ctx))
            else:
                await self._io(subtree, backing.truncate, (self.inodes.fd(node),),
                               attr.st_size, caller, blocking=True, user=self._charged(ctx))
        if fields.update_atime or fields.update_mtime:
            await self._io(
                subtree, backing.utimens, (self.inodes.fd(node),),
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
                time_caller,
            )
        st = await self._io(subtree, backing.getattr_, (self.inodes.fd(node),))
        return self._attrs(node, st)

    async def readlink(self, inode: InodeT, ctx: RequestContext) -> FileNameT:
        node = self._node(inode)
        self._enter(ctx, node)
        return FileNameT(await self._io(node.subtree, backing.readlink, (self.inodes.fd(node),)))

    async def access(self, inode: InodeT, mode: ModeT, ctx: RequestContext) -> bool:
        node = self._node(inode)
        caller = self._enter(ctx, node, write=bool(mode & os.W_OK), groups=True)
        return await self._io(node.subtree, backing.access, (self.inodes.fd(node),), mode, caller)

    # --- creating and removing names --------------------------------------------------------

    async def mkdir(self, parent_inode: InodeT, name: FileNameT, mode: ModeT,
                    ctx: RequestContext) -> EntryAttributes:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        made = await self._io(parent.subtree, backing.mkdir, (self.inodes.fd(parent),), name,
                              mode, caller, new_fds=first_fd)
        return self._adopt(parent, name, made)

    async def mknod(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        if self.ctx.config.access.deny_special_files:
            backing.refuse_special(mode)
        made = await self._io(parent.subtree, backing.mknod, (self.inodes.fd(parent),), name,
                              mode, rdev, caller, new_fds=first_fd)
        return self._adopt(parent, name, made)

    async def symlink(self, parent_inode: InodeT, name: FileNameT, target: FileNameT,
                      ctx: RequestContext) -> EntryAttributes:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        made = await self._io(parent.subtree, backing.symlink, (self.inodes.fd(parent),), name,
                              target, caller, new_fds=first_fd)
        return self._adopt(parent, name, made)

    async def link(self, inode: InodeT, new_parent_inode: InodeT, new_name: FileNameT,
                   ctx: RequestContext) -> EntryAttributes:
        parent, caller = await self._parent_for_change(new_parent_inode, new_name, ctx)
        node = self._node(inode)
        if node.subtree is not parent.subtree:
            raise OSError(errno.EXDEV, "hard link between subtrees")
        fds = (self.inodes.fd(node), self.inodes.fd(parent))
        made = await self._io(parent.subtree, backing.link, fds, new_name,
                              _as_squashed(caller), new_fds=first_fd)
        return self._adopt(parent, new_name, made)

    async def refuse_across(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext,
                            code: int, why: str) -> NoReturn:
        """A rename or link whose other end is a control object: this end's checks come
        first (the errno a caller sees does not depend on which end is the odd one), then
        code."""
        await self._parent_for_change(parent_inode, name, ctx)
        raise OSError(code, why)

    async def unlink(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        st = await self._io(parent.subtree, backing.unlink, (self.inodes.fd(parent),), name,
                            caller)
        if st.st_nlink <= 1:
            # The last name is gone: drop our descriptor now rather than at the kernel's
            # forget, so the space comes back when the last open file closes, as natively.
            gone = self.inodes.find(parent.subtree, st.st_dev, st.st_ino)
            if gone is not None:
                # Closing the last reference of a large file frees its blocks, which can
                # take seconds: keep a reference and drop it in a worker (offload.py).
                large = st.st_blocks > LARGE_BLOCKS and gone.fd >= 0 and not gone.pins
                keep = os.dup(gone.fd) if large else -1
                self.inodes.release_fd(gone)
                if keep >= 0:
                    await self.offloader.close(parent.subtree, (keep,))

    async def rmdir(self, parent_inode: InodeT, name: FileNameT, ctx: RequestContext) -> None:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        await self._io(parent.subtree, backing.rmdir, (self.inodes.fd(parent),), name, caller)

    async def rename(self, parent_inode_old: InodeT, name_old: FileNameT,
                     parent_inode_new: InodeT, name_new: FileNameT, flags: FlagT,
                     ctx: RequestContext) -> None:
        old_parent, caller = await self._parent_for_change(parent_inode_old, name_old, ctx)
        new_parent, _ = await self._parent_for_change(parent_inode_new, name_new, ctx)
        if old_parent.subtree is not new_parent.subtree:
            raise OSError(errno.EXDEV, "rename between subtrees")
        if flags & syscalls.RENAME_WHITEOUT and (
                self.ctx.config.access.deny_special_files):
            raise OSError(errno.EPERM, "whiteouts are not created (access.deny_special_files)")
        fds = (self.inodes.fd(old_parent), self.inodes.fd(new_parent))
        await self._io(old_parent.subtree, backing.rename, fds, name_old, name_new, flags,
                       caller)

    # --- files ------------------------------------------------------------------------------

    async def open(self, inode: InodeT, flags: FlagT, ctx: RequestContext) -> FileInfo:
        node = self._node(inode)
        caller = self._enter(ctx, node, write=bool(flags & _WRITE_FLAGS), groups=True,
                             new_names=True)
        user = self._charged(ctx)
        self.handles.check_room(user)
        path_fd = self.inodes.fd(node)
        frees = bool(flags & os.O_TRUNC) and os.fstat(path_fd).st_blocks > LARGE_BLOCKS
        fd = await self.offloader.open(
            node.subtree, backing.reopen, (path_fd,), flags, caller, new_fds=the_fd,
            opened=_opened_by_reopen, blocking=frees, user=user)
        handle = self.handles.add_file(node, fd, bool(flags & _WRITE_FLAGS), caller, user,
                                       sync=bool(flags & _SYNC_FLAGS))
        # keep_cache: pages stay valid across opens; the kernel drops them itself when it
        # sees size or mtime change (FUSE_AUTO_INVAL_DATA), and writes through the view
        # go through the same page cache.
        return FileInfo(fh=FileHandleT(handle.fh), keep_cache=True)

    async def create(self, parent_inode: InodeT, name: FileNameT, mode: ModeT, flags: FlagT,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        parent, caller = await self._parent_for_change(parent_inode, name, ctx)
        if self.ctx.config.access.deny_special_files:
            backing.refuse_setid_on_file(mode, stat.S_IFREG)
        user = self._charged(ctx)
        self.handles.check_room(user)
        fd, path_fd, st = await self.offloader.open(
            parent.subtree, _create, (self.inodes.fd(parent),), flags, name, mode, caller,
            new_fds=two_fds, opened=_opened_by_create, user=user)
        try:
            self.handles.check_room(user)  # a call that awaited: other opens may have come
        except OSError:
            os.close(fd)
            os.close(path_fd)
            raise
        node = self.inodes.adopt(parent.subtree, path_fd, st.st_dev, st.st_ino, parent.ino, name)
        handle = self.handles.add_file(node, fd, True, caller, user,
                                       sync=bool(flags & _SYNC_FLAGS))
        return FileInfo(fh=FileHandleT(handle.fh), keep_cache=True), self._attrs(node, st)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        return await self.offloader.read(handle.node.subtree, handle.fd, size, off,
                                         self.handles.user_of(fh))

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        handle = self.handles.file(fh)
        return await self._io(handle.node.subtree, backing.write, (handle.fd,), buf, off,
                              handle.caller, blocking=handle.sync,
                              user=self.handles.user_of(fh))

    async def release(self, fh: FileHandleT) -> None:
        later = self.handles.release(fh)
        if later is not None:
            await self.offloader.close(*later)
        self.registry.reap()

    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        handle = self.handles.file(fh)
        sync = os.fdatasync if datasync else os.fsync
        await self._io(handle.node.subtree, sync, (handle.fd,), blocking=True,
                       user=self.handles.user_of(fh))

    # --- directories ------------------------------------------------------------------------

    async def opendir(self, inode: InodeT, ctx: RequestContext) -> FileHandleT:
        node = self._node(inode)
        caller = self._enter(ctx, node, groups=True, new_names=True)
        user = self._charged(ctx)
        self.handles.check_room(user)
        fd = await self._io(node.subtree, backing.opendir, (self.inodes.fd(node),), caller,
                            new_fds=the_fd)
        return FileHandleT(self.handles.add_dir(node, fd, caller, user).fh)

    async def readdir(self, fh: FileHandleT, start_id: int, token: ReaddirToken) -> None:
        handle = self.handles.get(fh)
        assert isinstance(handle, DirHandle)
        subtree = handle.node.subtree
        find = self.inodes.find
        dev = handle.node.dev
        held_since = self._held_since(subtree)
        seek: int | None = None
        if start_id != handle.at:
            # rewinddir, seekdir, or entries the kernel did not take: resume where it says.
            seek, handle.buf, handle.cursor = start_id, b"", 0
        while True:
            if handle.cursor >= len(handle.buf):
                handle.buf = await self._io(subtree, backing.read_dir, (handle.fd,), seek,
                                            _DIR_BUFFER_BYTES)
                handle.cursor, seek = 0, None
                if not handle.buf:
                    break
            name, next_off, reclen, d_ino, d_type = backing.dir_entry(handle.buf,
                                                                      handle.cursor)
            if name in (b".", b".."):
                # `.` and `..` as a native listing shows them, by name and type alone: the
                # kernel never links them or takes a reference (so attributes would be
                # dropped), and `..` is never resolved on the source (SPEC 1). Both carry
                # the directory's own number.
                if not pyfuse3.readdir_reply_name(token, FileNameT(name),
                                                  InodeT(handle.node.ino), ModeT(stat.S_IFDIR),
                                                  next_off):
                    break
            else:
                node = find(subtree, dev, d_ino) if d_type else None
                if (node is not None and node.lookups and node.found_at > held_since
                        and not node.trimming):
                    # The kernel holds an entry of it that is still valid for a while: the
                    # name alone, with no stat and no lookup reference (a walk that comes
                    # after that entry expired asks with a lookup, as for a plain READDIR).
                    if not pyfuse3.readdir_reply_name(token, FileNameT(name),
                                                      InodeT(node.ino),
                                                      ModeT(d_type << 12), next_off):
                        break
                else:
                    found = await self._dir_entry(handle, name)
                    if found is not None:
                        node, attrs = found
                        if not pyfuse3.readdir_reply(token, FileNameT(name), attrs, next_off):
                            self.inodes.forget(node.ino, 1)  # the kernel did not take it
                            break
            handle.cursor += reclen
            handle.at = next_off
        self._trim()

    def _held_since(self, subtree: LiveSubtree) -> float:
        """Entries the kernel got after this time (monotonic) are still valid for at least a
        quarter of entry_timeout; nothing counts on a subtree the kernel caches nothing of."""
        entry_timeout, _ = self._timeouts(subtree)
        if entry_timeout <= 0:
            return math.inf
        return time.monotonic() - entry_timeout * 0.75

    async def _dir_entry(self, handle: DirHandle, name: bytes,
                         ) -> tuple[Node, EntryAttributes] | None:
        """The node of one listed name, with one lookup counted; None if it is gone."""
        subtree = handle.node.subtree
        inodes = self.inodes
        attrs = EntryAttributes()
        try:
            # The attributes are read straight into the reply (no os.stat_result).
            dev, st_ino = await self._io(subtree, attrs.stat_at, (handle.fd,), name)
        except FileNotFoundError:
            return None  # removed since getdents64 saw it
        node = inodes.find(subtree, dev, st_ino)
        if node is not None and node.fd < 0 and node.handle is not None:
            # Evicted: still the object the table remembers, or a new one behind a
            # recycled st_ino? Its file handle says, without opening it.
            try:
                same = node.handle == await self._io(subtree, backing.handle_of,
                                                     (handle.fd,), name)
            except OSError:
                same = False
            # An offloaded call awaits: a forget may have dropped the node meanwhile.
            if not same or inodes.find(subtree, dev, st_ino) is not node:
                node = None
        if (node is None or (node.fd < 0 and node.handle is None) or not subtree.live
                or node.is_root):
            # Not held: open it, so a new object behind a recycled st_ino is told apart
            # from the one the table remembers (InodeTable.adopt). A subtree root met
            # again (its source bind-mounted below itself) shows as its gate (_attrs).
            try:
                fd, st = await self._io(subtree, backing.lookup, (handle.fd,), name,
                                        new_fds=first_fd)
            except FileNotFoundError:
                return None
            node = inodes.adopt(subtree, fd, st.st_dev, st.st_ino, handle.node.ino, name)
            return node, self._attrs(node, st)
        inodes.count_lookup(node)
        return node, self._fill_listed(node, attrs)

    def _fill_listed(self, node: Node, attrs: EntryAttributes) -> EntryAttributes:
        """attrs (read by stat_at) made a reply for node, as _attrs does from an
        os.stat_result for anything but a subtree root."""
        attrs.st_ino = InodeT(node.ino)
        attrs.generation = node.generation
        attrs.entry_timeout, attrs.attr_timeout = self._timeouts(node.subtree)
        return attrs

    async def releasedir(self, fh: FileHandleT) -> None:
        self.handles.release(fh)
        self.registry.reap()

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if isinstance(handle, DirHandle):
            await self._io(handle.node.subtree, os.fsync, (handle.fd,), blocking=True,
                           user=self.handles.user_of(fh))

