"""Resolve a SOURCE once and check the descriptor (SPEC 4 attach and mount).

How this works: a SOURCE path is walked one component at a time, each step an
openat2(RESOLVE_NO_SYMLINKS) of a single name from the previous step's descriptor, made
with the caller's filesystem credentials: no symlink anywhere is followed (ELOOP), the
kernel checks the caller's search permission on every directory of the path (EACCES), and
`..` returns to the descriptor it came from. `source_roots` is enforced by walking the part
of the path below a root from a descriptor of that root, never by comparing strings, and
`..` cannot climb above it. After each step the descriptor is compared with the view
(ViewGuard), using only statx(AT_STATX_DONT_SYNC), which never asks a FUSE daemon anything:
a source inside the view, or one containing it, is EINVAL before the walk would ever send
this daemon a request to itself (it serves one request at a time: that would deadlock).

`attach` then makes every check on the final descriptor: fstat, the mount's filesystem type
(from the mount id that statx reports), mount-root flag, and the caller's read+search right.
It then pins the source as a private detached copy of its mount tree
(open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)): nothing mounted on or inside the source path
afterwards is seen, and `..` can never walk onto an over-mount; the mounts that copy would
take are checked first, so it never holds the view's own mount. `mount` opens its SOURCE
device or image as the caller (read, and write unless `ro`) and builds a filesystem with
fsopen/fsconfig/fsmount as a detached mount that no path ever names.

Nothing here is called on the data path; after this module returns a descriptor, no path
of that source is ever resolved again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field

from fusemount.core.records import AccessConfig, Caller, ControlError, Identity
from fusemount.host import creds, syscalls

_OPEN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NO_SYMLINKS = syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
_CLONE = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_RECURSIVE
_EMPTY_NOSYNC = syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW | syscalls.AT_STATX_DONT_SYNC
_ROOT_CALLER = Caller(0, 0, 0)

# Options that would undo what the SPEC promises for every daemon-made mount.
_FORBIDDEN_MOUNT_OPTIONS = frozenset({"suid", "dev", "exec"})


@dataclass(slots=True)
class OpenedSource:
    """A pinned source. root_fd is the only way in; close() releases everything it holds."""

    root_fd: int
    identity: Identity
    mnt_id: int  # the detached copy's mount id as name_to_handle_at reports it
    extra_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.root_fd, *self.extra_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.extra_fds.clear()


def _err(exc: OSError, what: str) -> ControlError:
    code = exc.errno or errno.EIO
    if code == errno.ELOOP and what.startswith("source /"):
        link = _symlink_in(what.removeprefix("source "))
        if link is not None:
            return ControlError(code, f"{what}: symlink met at {link} (symlinks in a source "
                                "path are not followed; give the real path)")
    return ControlError(code, f"{what}: {os.strerror(code)}")


def _symlink_in(path: str) -> str | None:
    """`LINK -> TARGET` for the first symlink in path, for the ELOOP message only.

    Walks only through directories that everyone may search, so the message tells nobody
    more than they could see natively; None when the walk cannot name it.
    """
    current = "/"
    for part in [p for p in path.split("/") if p]:
        try:
            parent = os.lstat(current)
            if not parent.st_mode & stat.S_IXOTH:
                return None
            current = os.path.join(current, part)
            st = os.lstat(current)
            if stat.S_ISLNK(st.st_mode):
                return f"{current} -> {os.readlink(current)}"
        except OSError:
            return None
    return None


def fstype_of_mount(mnt_id: int) -> str:
    """Filesystem type of a mount id from /proc/self/mountinfo ('' if not listed)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            if head.split(" ", 1)[0] == str(mnt_id):
                return tail.split(" ", 1)[0]
    return ""


class _Outside(Exception):
    """`..` would leave the directory the walk started from."""


@dataclass(slots=True)
class ViewGuard:
    """What a source must never contain or lie in: this daemon's own view (SPEC 4).

    dir_fd is an O_PATH descriptor of the view's directory opened before the view was
    mounted over it, so it names the covered directory, whose ancestors are what a
    containing source would be; fuse_dev is the view's filesystem once mounted (its
    bind mounts and propagated copies share it).
    """

    path: str
    dir_fd: int
    dir_id: tuple[int, int]
    fuse_dev: int | None = None

    @classmethod
    def open(cls, view: str) -> ViewGuard:
        """Hold the view's directory; its canonical path is what mountinfo will show (the
        operator's VIEW may go through symlinks: it is trusted, unlike a SOURCE)."""
        fd = os.open(view, _OPEN_DIR)
        try:
            st = os.fstat(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
        except BaseException:
            os.close(fd)
            raise
        return cls(path=path, dir_fd=fd, dir_id=(st.st_dev, st.st_ino))

    def mounted(self) -> None:
        """Record the view's filesystem, read from mountinfo: touching the mount itself
        before the daemon serves requests could wait on this very daemon."""
        for entry in _mountinfo():
            if entry.mount_point == self.path and entry.fstype.startswith("fuse"):
                self.fuse_dev = entry.dev  # the last one listed is the topmost

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)

    def refuse_inside(self, fd: int, path: str) -> None:
        """EINVAL if fd is the view (mounted or not) or lies inside it. Never sends FUSE a
        request: AT_STATX_DONT_SYNC answers from the inode the kernel already has."""
        sx = syscalls.statx(fd, b"", _EMPTY_NOSYNC)
        # Every inode of the view, through any mount of it, carries the view's device.
        if sx.dev == self.fuse_dev or (sx.dev, sx.ino) == self.dir_id:
            raise ControlError(errno.EINVAL, f"source {path} lies inside the view "
                               f"{self.path} (a view cannot serve itself)")

    def refuse_containing(self, fd: int, path: str) -> None:
        """EINVAL if the directory fd contains the view: it is the view's directory or one
        of its ancestors (by dev and inode, so another bind mount of an ancestor counts
        too), or the mounts a recursive copy of it would take include the view's."""
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if ident in self._ancestors():
            raise ControlError(errno.EINVAL, f"source {path} contains the view {self.path} "
                               "(a view cannot serve itself)")
        if self.fuse_dev is None:
            return  # not mounted yet: a copy made now holds nothing of the view
        sx = syscalls.statx(fd, b"", _EMPTY_NOSYNC)
        where = _path_of(fd)
        if where is None:
            return  # deleted: nothing can be mounted below it any more
        for entry in _submounts(sx.mnt_id_old, where):
            if entry.dev == self.fuse_dev:
                raise ControlError(errno.EINVAL, f"source {path} holds a mount of the view "
                                   f"at {entry.mount_point} (a view cannot serve itself)")

    def _ancestors(self) -> set[tuple[int, int]]:
        """(dev, ino) of the view's directory and every directory above it, walked with
        `..` from the held descriptor (so a rename of an ancestor is seen)."""
        seen: set[tuple[int, int]] = {self.dir_id}
        fd = os.dup(self.dir_fd)
        try:
            for _ in range(4096):
                up = syscalls.openat2(fd, "..", _OPEN_DIR, 0, 0)
                os.close(fd)
                fd = up
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in seen:
                    break  # `..` of the root is the root
                seen.add((st.st_dev, st.st_ino))
        finally:
            os.close(fd)
        return seen


@dataclass(frozen=True, slots=True)
class _MountEntry:
    mount_id: int
    parent_id: int
    dev: int
    mount_point: str
    fstype: str


def _unescape(field_: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \ooo (octal)."""
    if "\\" not in field_:
        return field_
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[_MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            words = head.split(" ")
            major, _, minor = words[2].partition(":")
            entries.append(_MountEntry(int(words[0]), int(words[1]),
                                       os.makedev(int(major), int(minor)),
                                       _unescape(words[4]), tail.split(" ", 1)[0]))
    return entries


def _path_of(fd: int) -> str | None:
    where = os.readlink(f"/proc/self/fd/{fd}")
    return None if where.endswith(" (deleted)") else where


def _submounts(mnt_id: int, where: str) -> list[_MountEntry]:
    """The mounts a recursive copy of directory `where` on mount mnt_id would take: the
    mount's children at or below `where`, and everything below those."""
    entries = _mountinfo()
    children: dict[int, list[_MountEntry]] = {}
    for e in entries:
        children.setdefault(e.parent_id, []).append(e)
    prefix = where.rstrip("/") + "/"
    todo = [e for e in children.get(mnt_id, ())
            if e.mount_id != mnt_id and (e.mount_point == where
                                         or e.mount_point.startswith(prefix))]
    found: list[_MountEntry] = []
    while todo:
        e = todo.pop()
        if len(found) > len(entries):
            break  # a cycle in a racing table: stop rather than loop
        found.append(e)
        todo.extend(c for c in children.get(e.mount_id, ()) if c.mount_id != e.mount_id)
    return found


def _walk_from(start_fd: int, components: list[str], path: str, caller: Caller,
               guard: ViewGuard | None, final_dir: bool) -> int:
    """Walk components from start_fd (which stays the caller's): one openat2 per name, as
    the caller, no symlinks, `..` back to the previous descriptor (_Outside above the
    start). Returns an O_PATH descriptor of the last component."""
    stack: list[int] = []
    try:
        for index, name in enumerate(components):
            if name == "..":
                if not stack:
                    raise _Outside
                os.close(stack.pop())
                continue
            last = index == len(components) - 1
            flags = _OPEN_DIR if final_dir or not last else os.O_PATH | os.O_CLOEXEC
            parent = stack[-1] if stack else start_fd
            with creds.as_caller(caller):
                fd = syscalls.openat2(parent, name, flags, 0, _NO_SYMLINKS)
            stack.append(fd)
            if guard is not None:
                guard.refuse_inside(fd, path)
        result = stack.pop() if stack else os.dup(start_fd)
    except ControlError:
        raise
    except OSError as exc:
        raise _err(exc, f"source {path}") from None
    finally:
        for fd in stack:
            os.close(fd)
    return result


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c not in ("", ".")]


def _resolve(path: str, source_roots: tuple[str, ...], caller: Caller = _ROOT_CALLER,
             guard: ViewGuard | None = None, *, final_dir: bool = True) -> int:
    """Walk path as the caller with no symlink followed; beneath one of source_roots if
    any are set (EACCES outside them, `..` included). Returns an O_PATH descriptor."""
    if not path.startswith("/"):
        raise ControlError(errno.EINVAL, f"source {path} is not an absolute path")
    root_fd = syscalls.openat2(syscalls.AT_FDCWD, "/", _OPEN_DIR, 0, _NO_SYMLINKS)
    try:
        if not source_roots:
            try:
                return _walk_from(root_fd, _components(path), path, caller, guard,
                                  final_dir)
            except _Outside:  # `/..` is `/`, as natively
                return _walk_from(root_fd, _components(_lexical(path)), path, caller,
                                  guard, final_dir)
        norm = path.rstrip("/") or "/"
        for root in source_roots:
            root_n = root.rstrip("/") or "/"
            if norm == root_n:
                rest = ""
            elif norm.startswith(root_n.rstrip("/") + "/"):
                rest = norm[len(root_n.rstrip("/")) + 1 :]
            else:
                continue
            try:
                top = _walk_from(root_fd, _components(root_n), root_n, caller, guard, True)
            except ControlError as exc:
                if exc.errno == errno.EINVAL:
                    raise
                continue
            except _Outside:
                continue
            try:
                return _walk_from(top, _components(rest), path, caller, guard, final_dir)
            except _Outside:
                raise ControlError(errno.EACCES, f"source {path} is outside "
                                   "the allowed roots") from None
            finally:
                os.close(top)
        raise ControlError(errno.EACCES, f"source {path} is outside the allowed roots")
    finally:
        os.close(root_fd)


def _lexical(path: str) -> str:
    """path with `..` applied by name: only used when `..` climbs above `/`."""
    out: list[str] = []
    for c in _components(path):
        if c == "..":
            if out:
                out.pop()
        else:
            out.append(c)
    return "/" + "/".join(out)


def open_attach_source(
    path: str,
    access: AccessConfig,
    caller: Caller,
    *,
    self_service: bool,
    ro: bool,
    guard: ViewGuard | None = None,
) -> OpenedSource:
    """Resolve and check an `attach` SOURCE, then pin it. Raises ControlError (SPEC 4 errors)."""
    if self_service and not access.self_service_roots:
        raise ControlError(errno.EACCES, "self service has no access.self_service_roots")
    fd = _resolve(path, access.self_service_roots if self_service else access.source_roots,
                  caller, guard)
    try:
        if self_service and access.source_roots:
            # Both rule sets apply: resolve again beneath source_roots and insist on the same
            # object, so neither check is made on a path the other did not see.
            other = _resolve(path, access.source_roots, caller, guard)
            same = os.fstat(other)[1:3] == os.fstat(fd)[1:3]
            os.close(other)
            if not same:
                raise ControlError(errno.EACCES, f"source {path} changed during checks")
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(errno.ENOTDIR, f"source {path} is not a directory")
        sx = syscalls.statx(fd, b"", syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW)
        fstype = fstype_of_mount(sx.mnt_id_old)
        if access.fstypes and fstype not in access.fstypes:
            raise ControlError(errno.EPERM, f"filesystem type {fstype or '?'} of {path} "
                               "is not in access.fstypes")
        if access.require_mountpoint and not sx.is_mount_root:
            raise ControlError(errno.EINVAL, f"source {path} is not a mount point "
                               "(access.require_mountpoint)")
        if self_service and st.st_uid != caller.uid:
            raise ControlError(errno.EACCES, f"source {path} is not owned by the caller")
        if not caller_may_search(fd, caller):
            raise ControlError(errno.EACCES, f"caller may not read source {path}")
        if guard is not None:
            guard.refuse_containing(fd, path)
        identity = Identity(dev=st.st_dev, ino=st.st_ino, mount_id=sx.mnt_id_old, fstype=fstype)
        return _pin(fd, identity, ro)
    finally:
        os.close(fd)


def caller_may_search(fd: int, caller: Caller) -> bool:
    """Read and search right of the caller on an open directory, judged by the kernel."""
    if creds.is_privileged(caller):
        return True
    # /proc/self/fd/N: access() has no AT_EMPTY_PATH form in Python; the magic link names
    # exactly this descriptor's object, so nothing is resolved by name.
    with creds.as_caller(caller):
        return os.access(f"/proc/self/fd/{fd}", os.R_OK | os.X_OK, effective_ids=True)


def _pin(fd: int, identity: Identity, ro: bool) -> OpenedSource:
    try:
        clone = syscalls.open_tree(fd, b"", _CLONE | syscalls.AT_EMPTY_PATH)
    except OSError as exc:
        raise _err(exc, "cannot pin source (open_tree)") from None
    try:
        attrs = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
        if ro:
            attrs |= syscalls.MOUNT_ATTR_RDONLY
        syscalls.mount_setattr(
            clone, b"", syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE, attrs
        )
        st = os.fstat(clone)
        if (st.st_dev, st.st_ino) != (identity.dev, identity.ino):
            raise ControlError(errno.EAGAIN, "source changed while being pinned")
        return _opened(clone, identity)
    except BaseException:
        os.close(clone)
        raise


def _opened(root_fd: int, identity: Identity) -> OpenedSource:
    try:
        _, mnt_id = syscalls.name_to_handle_at(root_fd, b"", syscalls.AT_EMPTY_PATH)
    except OSError:
        mnt_id = -1  # no file handles on this filesystem: its nodes keep their descriptors

    return OpenedSource(root_fd=root_fd, identity=identity, mnt_id=mnt_id)


def set_readonly(src: OpenedSource, ro: bool) -> None:
    """Make the pinned copy read-only or writable again (`set NAME ro|rw`)."""
    if ro:
        syscalls.mount_setattr(src.root_fd, b"", syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE,
                               syscalls.MOUNT_ATTR_RDONLY)
    else:
        syscalls.mount_setattr(src.root_fd, b"", syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE,
                               0, syscalls.MOUNT_ATTR_RDONLY)


def parse_mount_options(options: str) -> list[tuple[str, str | None]]:
    """OPTS -> fsconfig pairs. Refuses anything that would undo nosuid/nodev (SPEC 4)."""
    pairs: list[tuple[str, str | None]] = []
    for word in filter(None, options.split(",")):
        key, eq, value = word.partition("=")
        if not key or "\0" in word:
            raise ControlError(errno.EINVAL, f"bad mount option {word!r}")
        if key in _FORBIDDEN_MOUNT_OPTIONS or key in ("source", "rw", "ro"):
            raise ControlError(errno.EINVAL, f"mount option {key!r} is not allowed")
        if key in ("nosuid", "nodev", "noexec"):
            pairs.append((key, None))  # mount attributes, applied below, not fsconfig keys
            continue
        pairs.append((key, value if eq else None))
    return pairs


def _open_mount_file(source: str, ro: bool, caller: Caller, source_roots: tuple[str, ...],
                     guard: ViewGuard | None) -> int:
    """Open a `mount` SOURCE for I/O as the caller: the kernel decides, as natively, whether
    they may read it (and write it unless ro); EACCES otherwise (SPEC 4)."""
    path_fd = _resolve(source, source_roots, caller, guard, final_dir=False)
    try:
        if stat.S_ISDIR(os.fstat(path_fd).st_mode):
            raise ControlError(errno.EINVAL, f"source {source} is neither a block "
                               "device nor a regular file")
        try:
            with creds.as_caller(caller):
                return os.open(f"/proc/self/fd/{path_fd}",
                               (os.O_RDONLY if ro else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise _err(exc, f"source {source}") from None
    finally:
        os.close(path_fd)


def open_mount_source(fstype: str, source: str, options: str, ro: bool,
                      caller: Caller = _ROOT_CALLER, source_roots: tuple[str, ...] = (),
                      guard: ViewGuard | None = None) -> OpenedSource:
    """Create a detached FSTYPE mount from SOURCE (`none`, a block device or an image file)."""
    pairs = parse_mount_options(options)
    extra: list[int] = []
    backing_dev = ""
    try:
        if source != "none":
            sfd = _open_mount_file(source, ro, caller, source_roots, guard)
            try:
                st = os.fstat(sfd)
                if stat.S_ISBLK(st.st_mode):
                    backing_dev = source
                    extra.append(sfd)
                elif stat.S_ISREG(st.st_mode):
                    from fusemount.host import loopdev

                    loop_fd, backing_dev = loopdev.attach_loop(sfd, ro)
                    extra.append(loop_fd)
                    os.close(sfd)
                else:
                    raise ControlError(errno.EINVAL, f"source {source} is neither a block "
                                       "device nor a regular file")
            except BaseException:
                if sfd not in extra:
                    os.close(sfd)
                raise
        mfd = _fsmount(fstype, backing_dev or "none", pairs, ro)
        st = os.fstat(mfd)
        identity = Identity(dev=st.st_dev, ino=st.st_ino, mount_id=0, fstype=fstype)
        opened = _opened(mfd, identity)
        # The loop device has autoclear: once the mount holds it, our descriptor may go.
        for fd in extra:
            os.close(fd)
        extra.clear()
        return opened
    except BaseException:
        for fd in extra:
            os.close(fd)
        raise


def mount_source_identity(fstype: str, source: str, caller: Caller = _ROOT_CALLER,
                          source_roots: tuple[str, ...] = (),
                          guard: ViewGuard | None = None) -> Identity:
    """What a `mount` source is, for holders and restarts: the image or device (dev, ino);
    `none` (tmpfs) has no backing object, so every `none` of one type is the same source."""
    if source == "none":
        return Identity(dev=0, ino=0, mount_id=0, fstype=fstype)
    fd = _resolve(source, source_roots, caller, guard, final_dir=False)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return Identity(dev=st.st_dev, ino=st.st_ino, mount_id=0, fstype=fstype)


def _fsmount(fstype: str, source: str, pairs: list[tuple[str, str | None]], ro: bool) -> int:
    try:
        ctx = syscalls.fsopen(fstype)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise ControlError(errno.EPERM, "fsopen refused: the daemon lacks "
                               "CAP_SYS_ADMIN") from None
        if exc.errno == errno.ENODEV:
            raise ControlError(errno.EINVAL, f"unknown filesystem type {fstype}") from None
        raise _err(exc, f"fsopen {fstype}") from None
    try:
        attrs = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
        try:
            if source != "none":
                syscalls.fsconfig_set_string(ctx, "source", source)
            if ro:
                syscalls.fsconfig_set_flag(ctx, "ro")
            for key, value in pairs:
                if key == "noexec":
                    attrs |= syscalls.MOUNT_ATTR_NOEXEC
                elif key in ("nosuid", "nodev"):
                    continue
                elif value is None:
                    syscalls.fsconfig_set_flag(ctx, key)
                else:
                    syscalls.fsconfig_set_string(ctx, key, value)
            syscalls.fsconfig_create(ctx)
        except OSError as exc:
            detail = "; ".join(syscalls.fs_messages(ctx)) or os.strerror(exc.errno or 0)
            raise ControlError(errno.EINVAL, f"{fstype}: {detail}") from None
        if ro:
            attrs |= syscalls.MOUNT_ATTR_RDONLY
        try:
            return syscalls.fsmount(ctx, attrs)
        except OSError as exc:
            detail = "; ".join(syscalls.fs_messages(ctx)) or os.strerror(exc.errno or 0)
            raise ControlError(exc.errno or errno.EINVAL, f"fsmount {fstype}: {detail}") from None
    finally:
        os.close(ctx)

