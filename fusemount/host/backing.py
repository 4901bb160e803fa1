"""Operations on sources. Descriptors only: nothing here accepts a path (SPEC 1, 3).

Every function is one `*at()` call (or a few on the same descriptor) relative to a
descriptor the caller holds, with a single-component name that the view has already
refused if it is `.`, `..`, empty or contains `/`. Symlinks are never followed: names
are opened with O_NOFOLLOW, metadata calls use AT_SYMLINK_NOFOLLOW or AT_EMPTY_PATH.
The one place a path string appears is `/proc/self/fd/N`, the kernel's name for a
descriptor we hold, used where Linux offers a call only by path on O_PATH descriptors
(re-opening for I/O, xattrs, access checks); it resolves to exactly that object.
Calls that create or change objects run as the caller (creds.as_caller).
"""

from __future__ import annotations

import errno
import os
import stat

from fusemount.core.records import Caller
from fusemount.host import syscalls
from fusemount.host.creds import as_caller

O_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_EMPTY = syscalls.AT_EMPTY_PATH | syscalls.AT_SYMLINK_NOFOLLOW
# open(2) flags a FUSE open may carry that we pass on when re-opening the object. Not
# O_DIRECT: the kernel already bypasses the view's page cache for such opens, and our
# buffers are not block-aligned, so the backing filesystem would refuse them (EINVAL).
_PASS_FLAGS = (
    os.O_ACCMODE | os.O_APPEND | os.O_TRUNC | os.O_SYNC | os.O_DSYNC | os.O_NOATIME
    | os.O_NONBLOCK
)
_SETID = stat.S_ISUID | stat.S_ISGID


def proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def lookup(parent_fd: int, name: bytes,
           caller: Caller | None = None) -> tuple[int, os.stat_result]:
    """Open name (never following it) as O_PATH; returns the descriptor and its stat.
    As root unless a caller is given (a squashed root: search permission as nobody)."""
    if caller is None:
        fd = os.open(name, O_LOOKUP, dir_fd=parent_fd)
    else:
        with as_caller(caller):
            fd = os.open(name, O_LOOKUP, dir_fd=parent_fd)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def stat_name(parent_fd: int, name: bytes) -> os.stat_result:
    return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)


def handle_of(parent_fd: int, name: bytes) -> bytes:
    """The file handle of name (never following it), without opening it."""
    return syscalls.name_to_handle_at(parent_fd, name, 0)[0]


def getattr_(fd: int) -> os.stat_result:
    return os.fstat(fd)


def refuse_setid_on_file(mode: int, file_mode: int) -> None:
    """access.deny_special_files (SPEC 3): set-ID bits never get onto a regular file."""
    if stat.S_ISREG(file_mode) and mode & _SETID:
        raise OSError(errno.EPERM, "set-ID bits are not allowed on regular files "
                      "(access.deny_special_files)")


def refuse_special(mode: int) -> None:
    """access.deny_special_files (SPEC 3): no device node (whiteouts included) and no
    set-ID bit on a new regular file, for anyone."""
    kind = stat.S_IFMT(mode)
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        raise OSError(errno.EPERM, "device nodes are not created (access.deny_special_files)")
    refuse_setid_on_file(mode, stat.S_IFREG if kind in (stat.S_IFREG, 0) else kind)


def kills_privileges(new_mode: int, file_mode: int) -> bool:
    """Is a mode change only the removal of set-ID bits that file_mode has?

    The kernel sends exactly that SETATTR when a permitted non-owner writes, truncates or
    chowns a set-ID file (no FUSE_HANDLE_KILLPRIV: the filesystem must clear the bits).
    Natively the kernel clears them whoever the writer is (ATTR_FORCE), so it is applied
    with the daemon's credentials, not refused as a non-owner's chmod.
    """
    new, old = new_mode & 0o7777, file_mode & 0o7777
    cleared = old & ~new
    return new & ~old == 0 and cleared != 0 and cleared & ~_SETID == 0


def chmod(fd: int, mode: int, caller: Caller) -> None:
    with as_caller(caller):
        syscalls.fchmodat2(fd, b"", mode & 0o7777, syscalls.AT_EMPTY_PATH)


def chown(fd: int, uid: int, gid: int, caller: Caller) -> None:
    with as_caller(caller):
        syscalls.fchownat(fd, b"", uid, gid, _EMPTY)


def truncate_open(open_fd: int, size: int, caller: Caller) -> None:
    with as_caller(caller):
        os.ftruncate(open_fd, size)


def truncate(fd: int, size: int, caller: Caller) -> None:
    with as_caller(caller):
        wfd = os.open(proc_path(fd), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(wfd, size)  # as the caller: an extension spends their allowance
        finally:
            os.close(wfd)


def write(open_fd: int, data: bytes, offset: int, caller: Caller) -> int:
    """pwrite as the caller: ENOSPC and EDQUOT come as natively (SPEC 6; creds.py), and the
    backing filesystem's own set-ID clearing is decided with the caller's groups, as the
    kernel's is (a set-group-ID file without group execute keeps its bit for a member)."""
    with as_caller(caller):
        return os.pwrite(open_fd, data, offset)


def utimens(fd: int, atime_ns: int | None, mtime_ns: int | None, caller: Caller,
            *, atime_now: bool = False, mtime_now: bool = False) -> None:
    with as_caller(caller):
        syscalls.utimensat(fd, b"", atime_ns, mtime_ns, _EMPTY,
                           atime_now=atime_now, mtime_now=mtime_now)


def readlink(fd: int) -> bytes:
    return os.readlink(b"", dir_fd=fd)


def reopen(fd: int, flags: int, caller: Caller) -> int:
    """A real descriptor for an O_PATH-held regular file, opened as the caller."""
    with as_caller(caller):
        return os.open(proc_path(fd), (flags & _PASS_FLAGS) | os.O_CLOEXEC)


def opendir(fd: int, caller: Caller) -> int:
    with as_caller(caller):
        return os.open(proc_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def read_dir(dir_fd: int, offset: int | None, size: int) -> bytes:
    """The next getdents64 records (at most size bytes) of an open directory, from offset
    (a d_off cookie the filesystem gave, or 0 for the start) or, with None, from where the
    descriptor stands. `.` and `..` come as the filesystem lists them; b"" at the end."""
    if offset is not None:
        os.lseek(dir_fd, offset, os.SEEK_SET)
    return syscalls.getdents64(dir_fd, size)


def dir_entry(records: bytes, pos: int) -> tuple[bytes, int, int, int, int]:
    """(name, offset of the next entry, record length, d_ino, d_type) of the record at pos
    of read_dir's result."""
    return syscalls.dirent64_at(records, pos)


def create(parent_fd: int, name: bytes, flags: int, mode: int,
           caller: Caller) -> tuple[int, int, os.stat_result]:
    """Create-or-open name as the caller; never follows a symlink at name (ELOOP).

    Returns the open descriptor, an O_PATH descriptor of the same object, and its stat.
    """
    oflags = (flags & _PASS_FLAGS) | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if flags & os.O_EXCL:
        oflags |= os.O_EXCL
    with as_caller(caller):
        fd = os.open(name, oflags, mode & 0o7777, dir_fd=parent_fd)
    try:
        path_fd, st = path_fd_of(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, path_fd, st


def path_fd_of(open_fd: int) -> tuple[int, os.stat_result]:
    """An O_PATH descriptor of the same object as an open descriptor, and its stat."""
    fd = os.open(proc_path(open_fd), os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def mkdir(parent_fd: int, name: bytes, mode: int, caller: Caller) -> tuple[int, os.stat_result]:
    with as_caller(caller):
        os.mkdir(name, mode & 0o7777, dir_fd=parent_fd)
    return lookup(parent_fd, name)


def mknod(parent_fd: int, name: bytes, mode: int, rdev: int,
          caller: Caller) -> tuple[int, os.stat_result]:
    """Device nodes as natively (SPEC 3): as the caller, so only a caller with CAP_MKNOD
    (root, not squashed) makes one; a whiteout (char 0:0) needs none, as natively."""
    kind = stat.S_IFMT(mode)
    if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, 0):
        raise OSError(errno.EINVAL, "unsupported node type")
    with as_caller(caller):
        os.mknod(name, mode, rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                 dir_fd=parent_fd)
    return lookup(parent_fd, name)


def symlink(parent_fd: int, name: bytes, target: bytes,
            caller: Caller) -> tuple[int, os.stat_result]:
    with as_caller(caller):
        os.symlink(target, name, dir_fd=parent_fd)
    return lookup(parent_fd, name)


def link(fd: int, new_parent_fd: int, new_name: bytes,
         caller: Caller | None = None) -> tuple[int, os.stat_result]:
    """Hard link the object held by fd. Runs as root: linking by descriptor needs
    CAP_DAC_READ_SEARCH, the kernel has already checked the caller's rights
    (default_permissions, protected_hardlinks), and a link creates no new inode to own.
    With a caller (a squashed root, whom the kernel checked as root) it runs as that
    caller through /proc/self/fd/N, so the backing filesystem applies the native checks."""
    if caller is None:
        syscalls.linkat(fd, b"", new_parent_fd, new_name, syscalls.AT_EMPTY_PATH)
    else:
        with as_caller(caller):
            os.link(proc_path(fd), new_name, dst_dir_fd=new_parent_fd, follow_symlinks=True)
    return lookup(new_parent_fd, new_name)


def unlink(parent_fd: int, name: bytes, caller: Caller) -> os.stat_result:
    """Remove name; returns what it was (its link count says whether it was the last)."""
    st = stat_name(parent_fd, name)
    with as_caller(caller):
        os.unlink(name, dir_fd=parent_fd)
    return st


def rmdir(parent_fd: int, name: bytes, caller: Caller) -> None:
    with as_caller(caller):
        os.rmdir(name, dir_fd=parent_fd)


def rename(old_parent_fd: int, new_parent_fd: int, old: bytes, new: bytes, flags: int,
           caller: Caller) -> None:
    if flags & ~(syscalls.RENAME_NOREPLACE | syscalls.RENAME_EXCHANGE
                 | syscalls.RENAME_WHITEOUT):
        raise OSError(errno.EINVAL, "unsupported rename flags")
    with as_caller(caller):
        syscalls.renameat2(old_parent_fd, old, new_parent_fd, new, flags)


def statfs(fd: int) -> os.statvfs_result:
    return os.fstatvfs(fd)


# xattrs: no *xattr call accepts an O_PATH descriptor, so these go through /proc/self/fd/N,
# which lands on the held object itself (a symlink too) without following anything further.

def getxattr(fd: int, name: bytes, caller: Caller) -> bytes:
    with as_caller(caller):
        return os.getxattr(proc_path(fd), name)


def listxattr(fd: int, caller: Caller) -> list[bytes]:
    with as_caller(caller):
        return [os.fsencode(n) for n in os.listxattr(proc_path(fd))]


def setxattr(fd: int, name: bytes, value: bytes, flags: int, caller: Caller) -> None:
    with as_caller(caller):
        os.setxattr(proc_path(fd), name, value, flags)


def removexattr(fd: int, name: bytes, caller: Caller) -> None:
    with as_caller(caller):
        os.removexattr(proc_path(fd), name)


def access(fd: int, mode: int, caller: Caller) -> bool:
    with as_caller(caller):
        return os.access(proc_path(fd), mode, effective_ids=True)


# Ranges of open files (issue 14): the calls behind fallocate, SEEK_DATA/SEEK_HOLE and
# copy_file_range. They take open descriptors, never O_PATH ones, and may block (allocating
# or copying gigabytes): callers run them in workers where that matters.

def fallocate(open_fd: int, mode: int, offset: int, length: int, caller: Caller) -> None:
    """fallocate(2) as the caller, so its blocks are the caller's to spend (SPEC 6).

    EOPNOTSUPP where the source's filesystem lacks `mode`, as natively.
    """
    with as_caller(caller):
        syscalls.fallocate(open_fd, mode, offset, length)


def seek_data(open_fd: int, offset: int, whence: int) -> int:
    """The next data (SEEK_DATA) or hole (SEEK_HOLE) at or after offset; ENXIO past the end.

    Moves the descriptor's own file position, which nothing else uses (I/O is pread/pwrite).
    """
    if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
        raise OSError(errno.EINVAL, "only SEEK_DATA and SEEK_HOLE reach the daemon")
    return os.lseek(open_fd, offset, whence)


# The most one read, write or copy_file_range moves on Linux (MAX_RW_COUNT): a longer
# request is answered with a short count, as natively.
MAX_RW_COUNT = 0x7FFFF000


def copy_range(in_fd: int, out_fd: int, in_offset: int, out_offset: int, length: int,
               flags: int, caller: Caller) -> int:
    """copy_file_range(2) between two open files of sources, as the caller; bytes copied.

    The source filesystem does the copy (a reflink or a server-side copy where it can).
    Between two filesystems it gives what it gives natively: a copy, or EXDEV.
    """
    if flags:
        raise OSError(errno.EINVAL, "copy_file_range flags must be 0")
    with as_caller(caller):
        return os.copy_file_range(in_fd, out_fd, min(length, MAX_RW_COUNT), in_offset,
                                  out_offset)
