"""Resolve a SOURCE once and check the descriptor (SPEC 4 attach and mount).

How this works: `attach` opens the path with openat2(RESOLVE_NO_SYMLINKS), so no symlink in
any component is followed (ELOOP), then makes every check on that descriptor: fstat, the
mount's filesystem type (from the mount id that statx reports), mount-root flag, and the
caller's read+search right. It then pins the source as a private detached copy of its
mount tree (open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)): nothing mounted on or inside the
source path afterwards is seen, and `..` can never walk onto an over-mount. `source_roots`
is enforced by resolving the path *beneath* a descriptor of the root (RESOLVE_BENEATH), not
by comparing strings. `mount` builds a filesystem with fsopen/fsconfig/fsmount as a detached
mount that no path ever names.

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


def _resolve(path: str, source_roots: tuple[str, ...]) -> int:
    """Open path with no symlink followed; beneath one of source_roots if any are set."""
    if not source_roots:
        try:
            return syscalls.openat2(syscalls.AT_FDCWD, path, _OPEN_DIR, 0, _NO_SYMLINKS)
        except OSError as exc:
            raise _err(exc, f"source {path}") from None
    norm = path.rstrip("/") or "/"
    for root in source_roots:
        root_n = root.rstrip("/") or "/"
        if norm == root_n:
            rest = "."
        elif norm.startswith(root_n.rstrip("/") + "/"):
            rest = norm[len(root_n.rstrip("/")) + 1 :]
        else:
            continue
        try:
            root_fd = syscalls.openat2(syscalls.AT_FDCWD, root_n, _OPEN_DIR, 0, _NO_SYMLINKS)
        except OSError:
            continue
        try:
            return syscalls.openat2(
                root_fd, rest, _OPEN_DIR, 0, _NO_SYMLINKS | syscalls.RESOLVE_BENEATH
            )
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ControlError(errno.EACCES, f"source {path} is outside "
                                   "the allowed roots") from None
            raise _err(exc, f"source {path}") from None
        finally:
            os.close(root_fd)
    raise ControlError(errno.EACCES, f"source {path} is outside the allowed roots")


def open_attach_source(
    path: str,
    access: AccessConfig,
    caller: Caller,
    *,
    self_service: bool,
    ro: bool,
) -> OpenedSource:
    """Resolve and check an `attach` SOURCE, then pin it. Raises ControlError (SPEC 4 errors)."""
    if self_service and not access.self_service_roots:
        raise ControlError(errno.EACCES, "self service has no access.self_service_roots")
    fd = _resolve(path, access.self_service_roots if self_service else access.source_roots)
    try:
        if self_service and access.source_roots:
            # Both rule sets apply: resolve again beneath source_roots and insist on the same
            # object, so neither check is made on a path the other did not see.
            other = _resolve(path, access.source_roots)
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


def open_mount_source(fstype: str, source: str, options: str, ro: bool) -> OpenedSource:
    """Create a detached FSTYPE mount from SOURCE (`none`, a block device or an image file)."""
    pairs = parse_mount_options(options)
    extra: list[int] = []
    backing_dev = ""
    try:
        if source != "none":
            try:
                sfd = syscalls.openat2(
                    syscalls.AT_FDCWD, source,
                    (os.O_RDONLY if ro else os.O_RDWR) | os.O_CLOEXEC, 0, _NO_SYMLINKS,
                )
            except OSError as exc:
                if exc.errno == errno.EISDIR:
                    raise ControlError(errno.EINVAL, f"source {source} is neither a block "
                                       "device nor a regular file") from None
                raise _err(exc, f"source {source}") from None
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


def mount_source_identity(fstype: str, source: str) -> Identity:
    """What a `mount` source is, for holders and restarts: the image or device (dev, ino);
    `none` (tmpfs) has no backing object, so every `none` of one type is the same source."""
    if source == "none":
        return Identity(dev=0, ino=0, mount_id=0, fstype=fstype)
    try:
        fd = syscalls.openat2(syscalls.AT_FDCWD, source, os.O_PATH | os.O_CLOEXEC, 0,
                              _NO_SYMLINKS)
    except OSError as exc:
        raise _err(exc, f"source {source}") from None
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

