"""The view's own objects: the root directory and `.fusemount/` (SPEC 3, 4).

The root lists `.fusemount` and the subtrees the caller may see; nothing can be created,
removed or renamed in it. Control files are served with direct I/O (size 0). Each open
of `mounts`, `mounts.json`, `metrics` or `version` takes a snapshot for its reader; `ctl`
keeps the reply to the last command written on that open file description.

ControlFiles has every handler ops.py routes to it for a control inode or handle, with the
errno each answers where a control object does not support the operation; `_FILES` is the
one table of the files in `.fusemount/`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import pyfuse3
from pyfuse3 import (
    EntryAttributes,
    FileHandleT,
    FileInfo,
    FileNameT,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
    XAttrNameT,
)

from fusemount import __version__
from fusemount.core.mounts import MountRecord
from fusemount.core.records import Access, Caller, State
from fusemount.host import principals
from fusemount.view.attrs import synthetic
from fusemount.view.context import ViewContext
from fusemount.view.inodes import FIRST_DYNAMIC_INO
from fusemount.view.live import LiveSubtree

# fstat of a subtree root's descriptor, offloaded if the subtree stalls: Offloader.run.
StatRoot = Callable[[LiveSubtree, Callable[[int], os.stat_result], tuple[int]],
                    Awaitable[os.stat_result]]
# A ctl write: (opener, command) -> (0 or errno, reply line). Controller.execute.
Execute = Callable[[Caller, bytes], Awaitable[tuple[int, bytes]]]

ROOT_INO = pyfuse3.ROOT_INODE
CTL_DIR_INO = 2
CTL_INO = 3
MOUNTS_INO = 4
MOUNTS_JSON_INO = 5
METRICS_INO = 6
VERSION_INO = 7
_LAST_CONTROL_INO = FIRST_DYNAMIC_INO - 1

CTL_DIR_NAME = b".fusemount"


@dataclass(frozen=True, slots=True)
class _File:
    """One file of `.fusemount/`: everything about it is in this one table."""

    ino: int
    mode: int
    # What an open for reading snapshots, for the opener (None: the reply to a command).
    content: Callable[[ControlFiles, Caller], bytes] | None
    admins_only: bool = False  # open() refuses others (the mode must let the kernel pass)


_FILES: dict[bytes, _File] = {
    b"ctl": _File(CTL_INO, 0o666, None),
    b"mounts": _File(MOUNTS_INO, 0o444, lambda files, caller: files.mounts_text(caller).encode()),
    b"mounts.json": _File(MOUNTS_JSON_INO, 0o444, lambda files, caller: (
        json.dumps(files.mounts_records(caller), indent=1) + "\n").encode()),
    # 0444 so the kernel lets admins-by-group open it; open() itself refuses non-admins.
    b"metrics": _File(METRICS_INO, 0o444, lambda files, caller: files.render_metrics().encode(),
                      admins_only=True),
    b"version": _File(VERSION_INO, 0o444, lambda files, caller: (
        f"fusemount {__version__}\n".encode())),
}
_BY_INO = {file.ino: file for file in _FILES.values()}
_STATIC_TIMEOUT = 60.0


def is_control(ino: int) -> bool:
    """Whether ino is the root, `.fusemount` or one of its files: what ops.py routes here."""
    return ino <= _LAST_CONTROL_INO


def _health(state: State, live: LiveSubtree | None) -> str:
    if state is not State.ATTACHED:
        return "failed"
    return "stalled" if live is not None and live.stalled_since is not None else "ok"


def _user_named(uid: object) -> str:
    """`mounts` is for people: names, where mounts.json keeps the numbers for scripts."""
    return principals.user_name(uid) if isinstance(uid, int) else str(uid)


def _grant_named(rendered: str) -> str:
    """"1001:ro" -> "alice:ro", "@1002:rw" -> "@team:rw"; unknown ids stay numbers."""
    who, _, access = rendered.rpartition(":")
    if who.startswith("@") and who[1:].isdigit():
        who = "@" + principals.group_name(int(who[1:]))
    elif who.isdigit():
        who = principals.user_name(int(who))
    return f"{who}:{access}"


def _escape(text: str) -> str:
    """/proc/mounts-style escaping so a source with spaces stays one field."""
    return (text.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
            .replace("\n", "\\012"))


class ControlFiles:
    def __init__(self, ctx: ViewContext, io: StatRoot,
                 execute: Execute | None = None,
                 render_metrics: Callable[[], str] = lambda: "") -> None:
        self.ctx = ctx
        # How a subtree root is stat'ed: Offloader.run, so a stalled source cannot stall
        # the root.
        self.io = io
        self.execute = execute  # None: ctl is not writable (a view without control)
        self.render_metrics: Callable[[], str] = render_metrics

    # --- attributes -------------------------------------------------------------------------

    def _attrs(self, ino: int) -> EntryAttributes:
        t = self.ctx.start_ns
        if ino == ROOT_INO:
            # Constant, so cached like any attribute: with timeout 0 every path walk into a
            # subtree cost a GETATTR of the root for the permission check. The price: for
            # cache.attr_timeout after the daemon died, `stat VIEW` still answers from the
            # cache; anything that reaches the daemon says "not connected" at once.
            # 0705, no group bits (SPEC 3): the kernel never caches the root's ACL (the root
            # inode exists before INIT enables ACLs), so with group bits every walk through
            # the root by a non-root user cost a GETXATTR (measured: 20k against 220k warm
            # stats/s). The price: a non-root process in group 0 may not list the root.
            return synthetic(ino, stat.S_IFDIR | 0o705, 2, t, self.ctx.config.cache.attr_timeout)
        if ino == CTL_DIR_INO:
            return synthetic(ino, stat.S_IFDIR | 0o755, 2, t, _STATIC_TIMEOUT)
        file = _BY_INO.get(ino)
        if file is not None:
            return synthetic(ino, stat.S_IFREG | file.mode, 1, t, _STATIC_TIMEOUT)
        raise OSError(errno.ENOENT, "no such control object")

    async def lookup(self, parent: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        if parent == ROOT_INO:
            if name == CTL_DIR_NAME:
                return self._attrs(CTL_DIR_INO)
            return await self._lookup_subtree(name, ctx)
        if parent == CTL_DIR_INO and name in _FILES:
            return self._attrs(_FILES[name].ino)
        raise OSError(errno.ENOENT, "no such control file")

    async def _stat_root(self, subtree: LiveSubtree, fd: int) -> os.stat_result:
        return await self.io(subtree, os.fstat, (fd,))

    async def _lookup_subtree(self, name: bytes, ctx: RequestContext) -> EntryAttributes:
        try:
            subtree = self.ctx.live.get(name.decode())
        except UnicodeDecodeError:
            subtree = None
        if subtree is None:
            raise OSError(errno.ENOENT, "no such subtree")
        # Gate mode: anyone finds the gate, and the kernel refuses outsiders from its caches,
        # so this answer may be cached for all. Hidden names: ENOENT, not EACCES, so the
        # subtree looks missing, and the answer is never cached (SPEC 5).
        if not self.ctx.gated:
            caller = self.ctx.callers.from_ctx(ctx)
            if self.ctx.access(caller, subtree.spec) is Access.NONE:
                raise OSError(errno.ENOENT, "no such subtree")
            subtree.last_access = self.ctx.now()
        node = self.ctx.inodes.node(subtree.root_ino)
        st = await self._stat_root(subtree, self.ctx.inodes.fd(node))
        if not subtree.live:
            raise OSError(errno.ENOENT, "no such subtree")  # detached while we waited
        self.ctx.inodes.count_lookup(node)
        return self.ctx.root_attrs(subtree, node.ino, st)

    def forget(self, ino: int, nlookup: int) -> None:
        """Control inodes are static: the kernel may forget them, nothing to release."""

    async def readlink(self, ino: int) -> NoReturn:
        """No control object is a symlink: EINVAL, as readlink(2) of any non-symlink."""
        raise OSError(errno.EINVAL, "not a symbolic link")

    async def getattr(self, ino: int, ctx: RequestContext) -> EntryAttributes:
        return self._attrs(ino)

    async def setattr(self, ino: int, fields: SetattrFields,
                      ctx: RequestContext) -> EntryAttributes:
        # `echo cmd > ctl` may truncate (O_TRUNC, or a size-0 setattr): accepted and ignored.
        if ino == CTL_INO and fields.update_size and not (
            fields.update_mode or fields.update_uid or fields.update_gid
        ):
            return self._attrs(ino)
        raise OSError(errno.EPERM, "control files cannot be changed")

    async def access(self, ino: int) -> bool:
        # The kernel judged the modes already (default_permissions); open() refuses the rest.
        return True

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        """The view root's answer: for the root and `.fusemount` (statfs_inode), and for
        every path with an unpatched pyfuse3, which has no statfs_inode."""
        return self.ctx.statfs(self.ctx.callers.from_ctx(ctx))

    async def refuse_change(self) -> NoReturn:
        """create, mkdir, mknod, symlink, link, unlink, rmdir, rename in the root or in
        `.fusemount`, or renaming out of them (SPEC 3, 4)."""
        raise OSError(errno.EACCES, "the root and .fusemount are immutable (SPEC 3)")

    # --- extended attributes: control objects have none, and take none -------------------------

    async def getxattr(self, name: XAttrNameT) -> bytes:
        raise OSError(pyfuse3.ENOATTR, "no xattrs here")

    async def listxattr(self) -> Sequence[XAttrNameT]:
        return []

    async def refuse_xattr_change(self) -> NoReturn:
        raise OSError(errno.EPERM, "no xattrs here")

    # --- directories ------------------------------------------------------------------------

    async def opendir(self, ino: int, ctx: RequestContext) -> FileHandleT:
        if ino not in (ROOT_INO, CTL_DIR_INO):
            raise OSError(errno.ENOTDIR, "not a directory")
        caller = self.ctx.callers.from_ctx(ctx)
        handle = self.ctx.handles.add_control(ino, caller)
        if ino == ROOT_INO:
            handle.entries = [(b".", ROOT_INO), (b"..", ROOT_INO),
                              (CTL_DIR_NAME, CTL_DIR_INO)] + [
                (s.name.encode(), s.root_ino) for s in self.ctx.visible(caller)
            ]
        else:
            handle.entries = [(b".", CTL_DIR_INO), (b"..", ROOT_INO)] + [
                (name, file.ino) for name, file in _FILES.items()]
        return FileHandleT(handle.fh)

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        handle = self.ctx.handles.control(fh)
        inodes = self.ctx.inodes
        for index in range(start_id, len(handle.entries)):
            name, ino = handle.entries[index]
            if is_control(ino):
                attrs = self._attrs(ino)
                node = None
            else:
                node = inodes.get(ino)
                if node is None or not node.subtree.live:
                    continue  # detached since the listing was taken
                try:
                    st = await self._stat_root(node.subtree, inodes.fd(node))
                except OSError:
                    continue
                if not node.subtree.live:
                    continue
                attrs = self.ctx.root_attrs(node.subtree, ino, st)
            if not pyfuse3.readdir_reply(token, FileNameT(name), attrs, index + 1):
                break
            if node is not None:
                inodes.count_lookup(node)

    # --- files --------------------------------------------------------------------------------

    async def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        if ino in (ROOT_INO, CTL_DIR_INO):
            raise OSError(errno.EISDIR, "is a directory")
        # Groups are read now, while the opener certainly exists: a command written later on
        # this open file acts for whoever opened it (like any file descriptor capability).
        caller = self.ctx.callers.full(ctx)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY
        file = _BY_INO.get(ino)
        if file is None:
            raise OSError(errno.ENOENT, "no such control file")
        if writing and file.content is not None:
            raise OSError(errno.EACCES, "read-only control file")
        if file.admins_only and not self.ctx.is_admin(caller):
            raise OSError(errno.EACCES, "metrics are for admins")
        content = b"" if file.content is None else file.content(self, caller)
        handle = self.ctx.handles.add_control(ino, caller, content)
        return FileInfo(fh=FileHandleT(handle.fh), direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.ctx.handles.control(fh)
        if handle.ino == CTL_INO:
            # The reply is read after the command's write, at file offset len(command):
            # serve it from the handle's own cursor, which each command resets.
            chunk = handle.content[handle.cursor : handle.cursor + size]
            handle.cursor += len(chunk)
            return chunk
        return handle.content[off : off + size]

    async def write(self, fh: int, data: bytes) -> int:
        handle = self.ctx.handles.control(fh)
        if handle.ino != CTL_INO or self.execute is None:
            raise OSError(errno.EBADF, "not writable")
        code, reply = await self.execute(handle.caller, data)
        handle.content = reply
        handle.cursor = 0
        if code:
            raise pyfuse3.FUSEError(code)
        return len(data)

    async def fsync(self) -> None:
        """Nothing to make durable: control files are served from memory."""

    async def release(self, fh: int) -> None:
        # No subtree to reap: a control handle pins no node and holds no descriptor.
        self.ctx.handles.release(fh)

    async def refuse_range(self, code: int) -> NoReturn:
        """fallocate and copy_file_range (EOPNOTSUPP: the kernel then copies with reads and
        writes, which the control files answer as usual), lseek's SEEK_DATA and SEEK_HOLE
        (ENXIO: a control file reads as size 0, where both seeks find nothing, as natively)."""
        raise OSError(code, "control files hold no ranges")

    # --- listings -----------------------------------------------------------------------------

    def mounts_records(self, caller: Caller) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        is_admin = self.ctx.is_admin(caller)
        for _, spec in self.ctx.table:
            access = self.ctx.access(caller, spec)
            if access is Access.NONE and not is_admin:
                continue
            live = self.ctx.live.get(spec.name)
            ident = spec.identity
            record = MountRecord(
                name=spec.name,
                kind=spec.kind.value,
                source=spec.source,
                state=spec.state.value,
                reason=spec.reason,
                ro=spec.policy.ro,
                owner=spec.policy.owner,
                allow=tuple(g.render() for g in spec.policy.grants),
                holders=tuple(spec.holders),
                squash="root" if spec.policy.squash_root else "none",
                expire=spec.expire_s,
                dev=ident.dev if ident else None,
                ino=ident.ino if ident else None,
                mount_id=ident.mount_id if ident else None,
                fstype=(spec.fstype or (ident.fstype if ident else "")),
                open_files=live.open_files if live else 0,
                access={Access.NONE: "none", Access.RO: "ro", Access.RW: "rw"}[access],
                health=_health(spec.state, live),
                options=spec.options if spec.kind.value == "mount" else None,
            ).to_json()
            out.append(record)
        return out

    def mounts_text(self, caller: Caller) -> str:
        lines = []
        for r in self.mounts_records(caller):
            opts = [
                "ro" if r["ro"] else "rw",
                f"kind={r['kind']}",
                f"state={r['state']}",
                f"owner={_user_named(r['owner'])}",
                f"access={r['access']}",
            ]
            if r["allow"]:
                allow = r["allow"]
                assert isinstance(allow, list)
                opts.append("allow=" + ";".join(_grant_named(str(a)) for a in allow))
            holders = r["holders"]
            assert isinstance(holders, list)
            if holders:
                opts.append(f"holders={len(holders)}")
            lines.append(f"{r['name']} {_escape(str(r['source']))} {r['fstype'] or '-'} "
                         f"{_escape(','.join(opts))}\n")
        return "".join(lines)
