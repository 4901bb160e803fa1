"""Thin ctypes wrappers for the Linux system calls that Python 3.11 does not expose.

Each function is named after its syscall, makes exactly that call (x86_64 numbers) and
raises OSError(errno) on failure. Nothing here decides policy, resolves a path on its own
initiative or retries an operation that could have taken effect; the callers (sources.py,
backing.py, creds.py) choose flags. Serves SPEC 1 (descriptor-only access), 3 (rename flags,
fallocate), 4 (`mount`: detached filesystems) and 5 (acting as the caller).

How this works: one `CDLL(None, use_errno=True)` handle whose `syscall` is bound once with a
c_long restype; the errno comes from ctypes.get_errno(). openat2's `struct open_how` is
cached per (flags, mode, resolve), because building it per call triples the cost of the
hottest call we make (kernel-facts §1). Structs the kernel writes into are made per call,
so every function is safe to call from any thread.
Known gap: x86_64 only; the numbers below are not valid on other architectures.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000
AT_RECURSIVE: Final = 0x8000
AT_STATX_DONT_SYNC: Final = 0x4000
AT_HANDLE_MNT_ID_UNIQUE: Final = 0x1

RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08

OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = 0o2000000

RENAME_NOREPLACE: Final = 1
RENAME_EXCHANGE: Final = 2
RENAME_WHITEOUT: Final = 4

MOUNT_ATTR_RDONLY: Final = 0x1
MOUNT_ATTR_NOSUID: Final = 0x2
MOUNT_ATTR_NODEV: Final = 0x4
MOUNT_ATTR_NOEXEC: Final = 0x8
MOUNT_ATTR_NOSYMFOLLOW: Final = 0x200000

STATX_BASIC_STATS: Final = 0x7FF
STATX_MNT_ID: Final = 0x1000
STATX_MNT_ID_UNIQUE: Final = 0x4000
STATX_ATTR_MOUNT_ROOT: Final = 0x2000


UTIME_NOW: Final = (1 << 30) - 1
UTIME_OMIT: Final = (1 << 30) - 2

FALLOC_FL_KEEP_SIZE: Final = 0x01
FALLOC_FL_PUNCH_HOLE: Final = 0x02

FSOPEN_CLOEXEC: Final = 1
FSMOUNT_CLOEXEC: Final = 1
FSCONFIG_SET_FLAG: Final = 0
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_CMD_CREATE: Final = 6

MAX_HANDLE_SZ: Final = 128

_NR_SETGROUPS: Final = 116
_NR_CAPGET: Final = 125
_NR_CAPSET: Final = 126
_NR_SETFSUID: Final = 122
_NR_SETFSGID: Final = 123
_NR_GETDENTS64: Final = 217
_NR_UTIMENSAT: Final = 280
_NR_FALLOCATE: Final = 285
_NR_NAME_TO_HANDLE_AT: Final = 303
_NR_OPEN_BY_HANDLE_AT: Final = 304
_NR_RENAMEAT2: Final = 316
_NR_STATX: Final = 332
_NR_OPEN_TREE: Final = 428
_NR_FSOPEN: Final = 430
_NR_FSCONFIG: Final = 431
_NR_FSMOUNT: Final = 432
_NR_OPENAT2: Final = 437
_NR_MOUNT_SETATTR: Final = 442
_NR_FCHMODAT2: Final = 452

_libc: Final = ctypes.CDLL(None, use_errno=True)

# argtypes stay unset on purpose: with them a call costs about 1 us more (measured), a third
# of openat2. Without them ctypes passes a Python int as a C int: fine in a register (it is
# sign-extended), but not for a value the kernel reads as 64 bits or for a 6th syscall
# argument, which goes on the stack with its upper half undefined. Those are wrapped in
# c_long at the call site. Names are always bytes (a str would be passed as wchar_t*).
_syscall: Final[Callable[..., int]] = _libc.syscall
_libc.syscall.restype = ctypes.c_long


def _error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def _name(path: bytes | str) -> bytes:
    return path if type(path) is bytes else os.fsencode(path)


# ---------------------------------------------------------------------------- openat2


class OpenHow(ctypes.Structure):
    """struct open_how (24 bytes); read-only to the kernel, so one instance may be shared."""

    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_OPEN_HOW_SIZE: Final = ctypes.sizeof(OpenHow)
_OPEN_HOW_CACHE_MAX: Final = 256
# (flags, mode, resolve) -> byref(OpenHow); the byref keeps its struct alive.
_open_how_cache: dict[tuple[int, int, int], ctypes._CArgObject] = {}


def _open_how(flags: int, mode: int, resolve: int) -> ctypes._CArgObject:
    key = (flags, mode, resolve)
    ref = _open_how_cache.get(key)
    if ref is None:
        if len(_open_how_cache) >= _OPEN_HOW_CACHE_MAX:
            # Callers use a handful of combinations; a flood means modes vary per call,
            # and forgetting everything is cheaper than tracking recency.
            _open_how_cache.clear()
        ref = ctypes.byref(OpenHow(flags & 0xFFFFFFFFFFFFFFFF, mode, resolve))
        _open_how_cache[key] = ref
    return ref


def openat2(dirfd: int, path: bytes | str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Open `path` relative to `dirfd` under the RESOLVE_* rules; returns a new fd.

    EXDEV for an escape under RESOLVE_BENEATH or a mount crossing under RESOLVE_NO_XDEV,
    ELOOP for a symlink under RESOLVE_NO_SYMLINKS, EAGAIN if a rename raced a `..` step
    (the caller may retry), EINVAL if `mode` is given without O_CREAT/O_TMPFILE.
    """
    fd = _syscall(_NR_OPENAT2, dirfd, _name(path), _open_how(flags, mode, resolve), _OPEN_HOW_SIZE)
    if fd < 0:
        raise _error()
    return fd


# -------------------------------------------------------------------- names and modes


_NR_FCHOWNAT: Final = 260
_NR_LINKAT: Final = 265


def fchownat(dirfd: int, path: bytes | str, uid: int, gid: int, flags: int = 0) -> None:
    """chown relative to dirfd; with AT_EMPTY_PATH it acts on an O_PATH fd itself.
    uid or gid -1 leaves that id unchanged."""
    if _syscall(_NR_FCHOWNAT, dirfd, _name(path), uid, gid, flags) < 0:
        raise _error()


def linkat(olddirfd: int, oldpath: bytes | str, newdirfd: int, newpath: bytes | str,
           flags: int = 0) -> None:
    """Hard link; with AT_EMPTY_PATH links the object held by olddirfd (needs
    CAP_DAC_READ_SEARCH). Never follows a symlink unless AT_SYMLINK_FOLLOW is given."""
    if _syscall(_NR_LINKAT, olddirfd, _name(oldpath), newdirfd, _name(newpath), flags) < 0:
        raise _error()


def renameat2(
    olddirfd: int, oldname: bytes | str, newdirfd: int, newname: bytes | str, flags: int = 0
) -> None:
    """renameat2(2): EEXIST under RENAME_NOREPLACE, ENOENT under RENAME_EXCHANGE if a side
    is missing, EXDEV across mounts, EINVAL for NOREPLACE|EXCHANGE."""
    if _syscall(_NR_RENAMEAT2, olddirfd, _name(oldname), newdirfd, _name(newname), flags) < 0:
        raise _error()


def fchmodat2(dirfd: int, path: bytes | str, mode: int, flags: int = 0) -> None:
    """fchmodat2(2): unlike glibc's fchmodat it needs no /proc, and with AT_EMPTY_PATH it
    works on an O_PATH fd. EOPNOTSUPP on a symlink."""
    if _syscall(_NR_FCHMODAT2, dirfd, _name(path), mode, flags) < 0:
        raise _error()


def utimensat(
    dirfd: int,
    path: bytes | str,
    atime_ns: int | None,
    mtime_ns: int | None,
    flags: int,
    *,
    atime_now: bool = False,
    mtime_now: bool = False,
) -> None:
    """utimensat(2) with nanosecond times; None leaves that time alone (UTIME_OMIT) and
    `*_now` sets it to the current time. With AT_EMPTY_PATH and b"" it works on an O_PATH fd."""
    times = (ctypes.c_long * 4)(*_timespec(atime_ns, atime_now), *_timespec(mtime_ns, mtime_now))
    if _syscall(_NR_UTIMENSAT, dirfd, _name(path), times, flags) < 0:
        raise _error()


def _timespec(ns: int | None, now: bool) -> tuple[int, int]:
    if now:
        return (0, UTIME_NOW)
    if ns is None:
        return (0, UTIME_OMIT)
    return divmod(ns, 1_000_000_000)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) on a descriptor opened for writing; EOPNOTSUPP where the fs lacks `mode`."""
    if _syscall(_NR_FALLOCATE, fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) < 0:
        raise _error()


# ------------------------------------------------------------------------------ statx


class _Statx(ctypes.Structure):
    _fields_ = (
        ("mask", ctypes.c_uint32),
        ("blksize", ctypes.c_uint32),
        ("attributes", ctypes.c_uint64),
        ("nlink", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("ino", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("attributes_mask", ctypes.c_uint64),
        ("times", ctypes.c_uint64 * 8),  # atime, btime, ctime, mtime: {s64 sec; u32 nsec; pad}
        ("rdev_major", ctypes.c_uint32),
        ("rdev_minor", ctypes.c_uint32),
        ("dev_major", ctypes.c_uint32),
        ("dev_minor", ctypes.c_uint32),
        ("mnt_id", ctypes.c_uint64),
        ("_rest", ctypes.c_uint64 * 13),
    )


assert ctypes.sizeof(_Statx) == 256


@dataclass(frozen=True, slots=True)
class StatxResult:
    """What sources.py and inodes.py check a descriptor against."""

    mnt_id: int  # STATX_MNT_ID_UNIQUE (never recycled) when the kernel has it, else mnt_id_old
    mnt_id_old: int  # the recyclable id of /proc/self/mountinfo field 1
    is_mount_root: bool
    dev: int  # equals os.stat().st_dev
    ino: int
    mode: int


_has_unique_mnt_id = True  # cleared once if the kernel ignores STATX_MNT_ID_UNIQUE


def _statx_into(buf: _Statx, dirfd: int, path: bytes, flags: int, mask: int) -> None:
    if _syscall(_NR_STATX, dirfd, path, flags, mask, ctypes.byref(buf)) < 0:
        raise _error()


def statx(dirfd: int, path: bytes | str, flags: int) -> StatxResult:
    """statx(2) for identity: two calls, because the kernel returns either the unique or
    the old mount id, never both. Pass AT_EMPTY_PATH with b"" to ask about `dirfd` itself."""
    global _has_unique_mnt_id
    name = _name(path)
    buf = _Statx()
    _statx_into(buf, dirfd, name, flags, STATX_BASIC_STATS | STATX_MNT_ID)
    old = buf.mnt_id if buf.mask & STATX_MNT_ID else 0
    unique = old
    if _has_unique_mnt_id:
        ubuf = _Statx()
        _statx_into(ubuf, dirfd, name, flags, STATX_MNT_ID_UNIQUE)
        if ubuf.mask & STATX_MNT_ID_UNIQUE:
            unique = ubuf.mnt_id
        else:
            _has_unique_mnt_id = False
    return StatxResult(
        mnt_id=unique,
        mnt_id_old=old,
        is_mount_root=bool(buf.attributes & STATX_ATTR_MOUNT_ROOT),
        dev=os.makedev(buf.dev_major, buf.dev_minor),
        ino=buf.ino,
        mode=buf.mode,
    )


# ------------------------------------------------------------------- mounts and trees


def open_tree(dirfd: int, path: bytes | str, flags: int) -> int:
    """open_tree(2); with OPEN_TREE_CLONE the fd is a private detached copy of the mount
    that later mounts on the original never reach."""
    fd = _syscall(_NR_OPEN_TREE, dirfd, _name(path), flags)
    if fd < 0:
        raise _error()
    return fd


def fsopen(fstype: str) -> int:
    """fsopen(2) with FSOPEN_CLOEXEC; ENODEV for an unknown filesystem type."""
    fd = _syscall(_NR_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC)
    if fd < 0:
        raise _error()
    return fd


def fsconfig_set_string(fd: int, key: str, value: str) -> None:
    """fsconfig(FSCONFIG_SET_STRING); EINVAL for an unknown key (see fs_messages)."""
    if _syscall(_NR_FSCONFIG, fd, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0) < 0:
        raise _error()


def fsconfig_set_flag(fd: int, key: str) -> None:
    """fsconfig(FSCONFIG_SET_FLAG) for a value-less option such as `nodelalloc`."""
    if _syscall(_NR_FSCONFIG, fd, FSCONFIG_SET_FLAG, key.encode(), None, 0) < 0:
        raise _error()


def fsconfig_create(fd: int) -> None:
    """fsconfig(FSCONFIG_CMD_CREATE): builds the superblock; may block on device I/O."""
    if _syscall(_NR_FSCONFIG, fd, FSCONFIG_CMD_CREATE, None, None, 0) < 0:
        raise _error()


def fs_messages(fd: int) -> list[str]:
    """Drain the kernel's message log of an fsopen fd ("e tmpfs: Unknown parameter ...").
    Never raises: it only serves to explain another error."""
    messages: list[str] = []
    for _ in range(64):  # the kernel keeps at most 8; the bound only guards a surprise
        try:
            data = os.read(fd, 4096)
        except OSError:  # ENODATA: log empty
            break
        if not data:
            break
        messages.append(data.decode(errors="replace").rstrip("\n"))
    return messages


def fsmount(fd: int, attr_flags: int) -> int:
    """fsmount(2) with FSMOUNT_CLOEXEC: a detached mount fd carrying MOUNT_ATTR_* flags."""
    mfd = _syscall(_NR_FSMOUNT, fd, FSMOUNT_CLOEXEC, attr_flags)
    if mfd < 0:
        raise _error()
    return mfd


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def mount_setattr(
    dfd: int, path: bytes | str, flags: int, attr_set: int, attr_clr: int = 0
) -> None:
    """mount_setattr(2); use AT_EMPTY_PATH|AT_RECURSIVE and b"" on a detached mount fd."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    if _syscall(_NR_MOUNT_SETATTR, dfd, _name(path), flags, ctypes.byref(attr), 32) < 0:
        raise _error()


# ------------------------------------------------------------------------ credentials


def setfsuid(uid: int) -> int:
    """Set this thread's fsuid and return the previous one; never fails visibly, so check
    with setfsuid(-1), which changes nothing and returns the current value."""
    return _syscall(_NR_SETFSUID, uid) & 0xFFFFFFFF


def setfsgid(gid: int) -> int:
    """Set this thread's fsgid and return the previous one (see setfsuid)."""
    return _syscall(_NR_SETFSGID, gid) & 0xFFFFFFFF


# tuple(groups) -> the array the kernel reads: building it costs as much as the syscall.
_group_arrays: dict[tuple[int, ...], ctypes.Array[ctypes.c_uint32]] = {}


def setgroups_thread(groups: Sequence[int]) -> None:
    """Replace the supplementary groups of the calling thread only. os.setgroups would
    change every thread of the daemon (glibc broadcasts it), so it must never be used."""
    key = tuple(groups)
    array = _group_arrays.get(key)
    if array is None:
        array = (ctypes.c_uint32 * len(key))(*key)
        if len(_group_arrays) >= 1024:
            _group_arrays.clear()
        _group_arrays[key] = array
    if _syscall(_NR_SETGROUPS, len(key), array) < 0:
        raise _error()


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


_CAP_VERSION_3: Final = 0x20080522
CAP_SYS_RESOURCE: Final = 24


@dataclass(frozen=True, slots=True)
class CapSets:
    """The three capability sets of one thread, as 64-bit masks."""

    effective: int
    permitted: int
    inheritable: int


def capget() -> CapSets:
    """The calling thread's capabilities (capget(2) with pid 0: this thread only)."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if _syscall(_NR_CAPGET, ctypes.byref(header), data) < 0:
        raise _error()
    return CapSets(
        effective=data[0].effective | data[1].effective << 32,
        permitted=data[0].permitted | data[1].permitted << 32,
        inheritable=data[0].inheritable | data[1].inheritable << 32,
    )


# CapSets -> the (header, data) arguments of capset, built once: the kernel only reads them
# (with the right version), and building ctypes structs costs more than the syscall.
_capset_args: dict[CapSets, tuple[ctypes._CArgObject, ctypes.Array[_CapData]]] = {}


def capset(caps: CapSets) -> None:
    """Set the calling thread's capabilities. The raw syscall changes only this thread
    (libcap's cap_set_proc does too; nothing here broadcasts like setgroups)."""
    args = _capset_args.get(caps)
    if args is None:
        data = (_CapData * 2)(
            _CapData(caps.effective & 0xFFFFFFFF, caps.permitted & 0xFFFFFFFF,
                     caps.inheritable & 0xFFFFFFFF),
            _CapData(caps.effective >> 32, caps.permitted >> 32, caps.inheritable >> 32),
        )
        args = (ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data)
        if len(_capset_args) < 16:  # the daemon uses two; tests a few more
            _capset_args[caps] = args
    if _syscall(_NR_CAPSET, *args) < 0:
        raise _error()


# ------------------------------------------------------------------------ file handles

_HANDLE_HEADER: Final = 8  # struct file_handle { u32 handle_bytes; int handle_type; }
_handle_guess = 32  # covers ext4, xfs and tmpfs; bigger handles cost one retry


def name_to_handle_at(dirfd: int, name: bytes | str, flags: int) -> tuple[bytes, int]:
    """(handle, mount id) for `dirfd`/`name`. The handle is the raw `struct file_handle`
    (header included), opaque to callers and accepted by open_by_handle_at. With
    AT_HANDLE_MNT_ID_UNIQUE the mount id is the unique one. EOPNOTSUPP where the fs
    cannot export handles."""
    path = _name(name)
    capacity = _handle_guess
    for _ in range(4):
        buf = ctypes.create_string_buffer(_HANDLE_HEADER + capacity)
        ctypes.c_uint32.from_buffer(buf).value = capacity
        mount_id = ctypes.c_uint64(0)  # the kernel writes an int, or a u64 with *_UNIQUE
        if _syscall(_NR_NAME_TO_HANDLE_AT, dirfd, path, buf, ctypes.byref(mount_id), flags) >= 0:
            used = ctypes.c_uint32.from_buffer(buf).value
            return buf.raw[: _HANDLE_HEADER + used], mount_id.value
        if ctypes.get_errno() != errno.EOVERFLOW:
            raise _error()
        # EOVERFLOW: the kernel stored the size it needs in handle_bytes.
        capacity = max(ctypes.c_uint32.from_buffer(buf).value, capacity + 1)
        if capacity > MAX_HANDLE_SZ:
            break
    raise OSError(errno.EOVERFLOW, os.strerror(errno.EOVERFLOW))


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> int:
    """Re-open a handle from name_to_handle_at. `mount_fd` must not be O_PATH (EBADF);
    ESTALE once the file is gone. Only pass handles this process minted: a handle can
    name a file outside the subtree `mount_fd` shows (kernel-facts §7)."""
    buf = ctypes.create_string_buffer(handle, len(handle))
    fd = _syscall(_NR_OPEN_BY_HANDLE_AT, mount_fd, buf, flags)
    if fd < 0:
        raise _error()
    return fd


# ------------------------------------------------------------------------ directories

# struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
_DIRENT64: Final = struct.Struct("<QqHB")


def getdents64(fd: int, size: int) -> bytes:
    """Up to size bytes of linux_dirent64 records from an open directory's current position
    (which advances past them); b"" at the end. EINVAL if one record does not fit."""
    buf = ctypes.create_string_buffer(size)
    got = _syscall(_NR_GETDENTS64, fd, buf, size)
    if got < 0:
        raise _error()
    return buf.raw[:got]


def dirent64_at(records: bytes, pos: int) -> tuple[bytes, int, int, int, int]:
    """The record of a getdents64 result starting at byte pos: (name, d_off, d_reclen,
    d_ino, d_type). d_off is the filesystem's cookie for the position after this record
    (lseek to it); d_type is a DT_* value, 0 (DT_UNKNOWN) where the filesystem does not say."""
    d_ino, d_off, reclen, d_type = _DIRENT64.unpack_from(records, pos)
    start = pos + _DIRENT64.size
    name = records[start : records.index(b"\0", start, pos + reclen)]
    return name, d_off, reclen, d_ino, d_type
