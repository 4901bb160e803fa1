"""The named POSIX behaviour suite: one function per behaviour, run on any directory.

Job: CASES maps a name to a function that takes an empty directory, exercises one behaviour
of SPEC 3 there (normal and error paths) and returns a JSON-able summary of what happened:
values, and errno names ("ENOENT") where a call failed. test_differential.py runs each case on
a plain directory and on a subtree of the view; the summaries must be equal. RULES holds the
behaviours where SPEC 3/4 makes the view differ from a plain directory on purpose (the
immutable root, `.fusemount/`), each with the summary the view must
give; those functions take the subtree's directory and reach the view root as its parent.

Never: put anything in a summary that legitimately differs between the two runs (inode and
device numbers, absolute paths, timestamps the case did not set itself), or leave a
descriptor open when a case ends (the subtree could not be detached).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import mmap
import os
import random
import shutil
import socket
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from fusemount.host import syscalls

JSON: TypeAlias = bool | int | float | str | Sequence["JSON"] | Mapping[str, "JSON"] | None
Case: TypeAlias = Callable[[Path], JSON]

CASES: dict[str, Case] = {}
RULES: dict[str, tuple[Case, JSON]] = {}

KIB = 1024
MIB = 1024 * KIB
READ_CHUNK = 128 * KIB  # the size of the kernel's buffered FUSE reads (kernel-facts §8)
T1_NS = (1_000_000_001, 2_000_000_002)
T2_NS = (1_234_567_890_123_456_789, 1_500_000_000_987_654_321)


def case(fn: Case) -> Case:
    """Register fn in CASES under its own name."""
    CASES[fn.__name__] = fn
    return fn


def rule(expected: JSON) -> Callable[[Case], Case]:
    """Register fn in RULES with the summary the view must produce."""

    def register(fn: Case) -> Case:
        RULES[fn.__name__] = (fn, expected)
        return fn

    return register


# --- summaries ------------------------------------------------------------------------------


def errname(exc: OSError) -> str:
    code = exc.errno if exc.errno is not None else 0
    return errno.errorcode.get(code, f"E{code}")


def outcome(fn: Callable[[], JSON]) -> JSON:
    """fn()'s value, or the errno name of the OSError it raised ("ENOENT")."""
    try:
        return fn()
    except OSError as exc:
        return errname(exc)


_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "sock",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
}


def kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), oct(stat.S_IFMT(mode)))


def describe(st: os.stat_result) -> dict[str, JSON]:
    return {
        "kind": kind(st.st_mode),
        "perm": oct(stat.S_IMODE(st.st_mode)),
        "size": st.st_size,
        "nlink": st.st_nlink,
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def info(path: Path | str, follow: bool = True) -> JSON:
    """kind, permission bits, size, link count and owner: what must match (no ino, no times)."""
    return describe(os.stat(path, follow_symlinks=follow))


def times(path: Path | str, follow: bool = True) -> JSON:
    st = os.stat(path, follow_symlinks=follow)
    return [st.st_atime_ns, st.st_mtime_ns]


def listing(path: Path | str) -> JSON:
    return sorted(os.listdir(path))


def content(path: Path | str) -> JSON:
    with open(path, "rb") as f:
        return f.read().decode("latin-1")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def open_close(path: Path | str | bytes, flags: int, mode: int = 0o644) -> JSON:
    """Open and close at once: None if the open worked, else the errno name."""
    return outcome(lambda: os.close(os.open(path, flags, mode)))


@contextmanager
def opened(path: Path | str | bytes, flags: int, mode: int = 0o644) -> Iterator[int]:
    fd = os.open(path, flags, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def snapshot(root: Path, ran_in: Path | None = None) -> JSON:
    """The whole tree under root, never following symlinks: every entry's description,
    contents of regular files and targets of symlinks. Times and inode numbers left out.
    ran_in is the directory the case saw (the view's, for a backing directory): absolute
    symlink targets are written relative to it as "<dir>/...", with their size to match."""
    prefix = str(ran_in if ran_in is not None else root)
    entries: dict[str, JSON] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = os.lstat(path)
            entry = describe(st)
            if stat.S_ISREG(st.st_mode):
                entry["data"] = digest(path.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path).replace(prefix, "<dir>")
                entry["target"] = target
                entry["size"] = len(target)
            entries[str(path.relative_to(root))] = entry
    return entries


def renameat2(old: Path, new: Path, flags: int) -> JSON:
    """renameat2 on descriptors of the two parent directories, as a program would do it."""
    old_dir = os.open(old.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        new_dir = os.open(new.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return outcome(lambda: syscalls.renameat2(old_dir, old.name, new_dir, new.name, flags))
        finally:
            os.close(new_dir)
    finally:
        os.close(old_dir)


# --- lookup, getattr --------------------------------------------------------------------------


@case
def stat_regular_file(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"hello", 0o640)
    return {
        "stat": outcome(lambda: info(f)),
        "lstat": outcome(lambda: info(f, follow=False)),
        "fstat": outcome(lambda: _fstat(f)),
        "is_file": f.is_file(),
        "is_dir": f.is_dir(),
        "root": outcome(lambda: info(d)),
    }


def _fstat(path: Path) -> JSON:
    with opened(path, os.O_RDONLY) as fd:
        return describe(os.fstat(fd))


@case
def stat_directory(d: Path) -> JSON:
    sub = d / "sub"
    sub.mkdir(0o755)
    (sub / "inner").mkdir(0o700)
    return {
        "sub": outcome(lambda: info(sub)),
        "inner": outcome(lambda: info(sub / "inner")),
        "dot": outcome(lambda: info(sub / ".")),
        "dotdot": outcome(lambda: info(sub / "inner" / "..")),
        "via_dotdot": outcome(lambda: info(sub / "inner" / ".." / "inner")),
    }


@case
def stat_symlink(d: Path) -> JSON:
    write_file(d / "target", b"0123456789")
    os.symlink("target", d / "link")
    os.symlink("sub", d / "dirlink")
    (d / "sub").mkdir()
    return {
        "lstat": outcome(lambda: info(d / "link", follow=False)),
        "stat": outcome(lambda: info(d / "link")),
        "dir_lstat": outcome(lambda: info(d / "dirlink", follow=False)),
        "dir_stat": outcome(lambda: info(d / "dirlink")),
        "trailing_slash": outcome(lambda: info(f"{d}/dirlink/", follow=False)),
        "is_symlink": (d / "link").is_symlink(),
    }


@case
def stat_missing_names(d: Path) -> JSON:
    os.symlink("nowhere", d / "dangling")
    return {
        "stat": outcome(lambda: info(d / "missing")),
        "lstat": outcome(lambda: info(d / "missing", follow=False)),
        "deep": outcome(lambda: info(d / "missing" / "x")),
        "dangling_stat": outcome(lambda: info(d / "dangling")),
        "dangling_lstat": outcome(lambda: info(d / "dangling", follow=False)),
        "exists": (d / "missing").exists(),
        "again": outcome(lambda: info(d / "missing")),  # a cached negative entry answers alike
    }


@case
def stat_through_file_is_enotdir(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    return {
        "stat": outcome(lambda: info(f / "x")),
        "trailing_slash": outcome(lambda: info(f"{f}/")),
        "create": open_close(f / "x", os.O_CREAT | os.O_WRONLY),
        "mkdir": outcome(lambda: os.mkdir(f / "x")),
        "listdir": outcome(lambda: listing(f)),
        "opendir": open_close(f, os.O_RDONLY | os.O_DIRECTORY),
    }


@case
def stat_symlink_loop_is_eloop(d: Path) -> JSON:
    os.symlink("b", d / "a")
    os.symlink("a", d / "b")
    os.symlink("self", d / "self")
    return {
        "stat": outcome(lambda: info(d / "a")),
        "open": open_close(d / "a", os.O_RDONLY),
        "self": outcome(lambda: info(d / "self")),
        "lstat": outcome(lambda: info(d / "a", follow=False)),
        "through": outcome(lambda: info(d / "self" / "x")),
    }


@case
def name_length_limits(d: Path) -> JSON:
    longest = "n" * 255
    too_long = "n" * 256
    return {
        "create_255": open_close(d / longest, os.O_CREAT | os.O_WRONLY),
        "stat_255": outcome(lambda: info(d / longest)),
        "create_256": open_close(d / too_long, os.O_CREAT | os.O_WRONLY),
        "stat_256": outcome(lambda: info(d / too_long)),
        "mkdir_256": outcome(lambda: os.mkdir(d / too_long)),
        "listing": outcome(lambda: [len(n) for n in os.listdir(d)]),
    }


# --- setattr ------------------------------------------------------------------------------------


@case
def chmod_file_modes(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x", 0o644)
    out: dict[str, JSON] = {}
    for mode in (0o600, 0o000, 0o777, 0o1644, 0o640):
        out[oct(mode)] = outcome(functools.partial(os.chmod, f, mode))
        out[oct(mode) + "_after"] = outcome(lambda: info(f))
    with opened(f, os.O_RDONLY) as fd:
        out["fchmod"] = outcome(lambda: os.fchmod(fd, 0o604))
        out["fchmod_after"] = describe(os.fstat(fd))
    out["missing"] = outcome(lambda: os.chmod(d / "missing", 0o600))
    return out


@case
def chmod_directory_modes(d: Path) -> JSON:
    sub = d / "sub"
    sub.mkdir(0o755)
    out: dict[str, JSON] = {}
    for mode in (0o700, 0o1777, 0o2755, 0o4755, 0o000, 0o755):
        out[oct(mode)] = outcome(functools.partial(os.chmod, sub, mode))
        out[oct(mode) + "_after"] = outcome(lambda: info(sub))
    return out


@case
def chmod_through_symlink_changes_target(d: Path) -> JSON:
    write_file(d / "t", b"x", 0o644)
    os.symlink("t", d / "l")
    os.chmod(d / "l", 0o600)
    return {
        "target": outcome(lambda: info(d / "t")),
        "link": outcome(lambda: info(d / "l", follow=False)),
        "dangling": outcome(lambda: _chmod_dangling(d)),
    }


def _chmod_dangling(d: Path) -> JSON:
    os.symlink("none", d / "dl")
    return outcome(lambda: os.chmod(d / "dl", 0o600))


@case
def chown_as_root(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    os.symlink("f", d / "l")
    out: dict[str, JSON] = {}
    out["to_other"] = outcome(lambda: os.chown(f, 1234, 5678))
    out["after_other"] = outcome(lambda: info(f))
    out["gid_only"] = outcome(lambda: os.chown(f, -1, 4321))
    out["after_gid_only"] = outcome(lambda: info(f))
    out["to_root"] = outcome(lambda: os.chown(f, 0, 0))
    out["after_root"] = outcome(lambda: info(f))
    out["lchown"] = outcome(lambda: os.chown(d / "l", 1111, 2222, follow_symlinks=False))
    out["link_after"] = outcome(lambda: info(d / "l", follow=False))
    out["target_after_lchown"] = outcome(lambda: info(f))
    out["through_link"] = outcome(lambda: os.chown(d / "l", 3333, 4444))
    out["target_after"] = outcome(lambda: info(f))
    with opened(f, os.O_RDONLY) as fd:
        out["fchown"] = outcome(lambda: os.fchown(fd, 0, 0))
        out["fchown_after"] = describe(os.fstat(fd))
    out["missing"] = outcome(lambda: os.chown(d / "missing", 0, 0))
    return out


@case
def chown_keeps_directory_setgid(d: Path) -> JSON:
    sub = d / "sub"
    sub.mkdir(0o755)
    os.chmod(sub, 0o2775)
    os.chown(sub, 0, 1234)
    write_file(sub / "child", b"")
    (sub / "childdir").mkdir()
    return {
        "sub": outcome(lambda: info(sub)),
        "child": outcome(lambda: info(sub / "child")),  # gid from the set-group-ID parent
        "childdir": outcome(lambda: info(sub / "childdir")),  # and the bit itself
    }


@case
def truncate_grow_and_shrink(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"0123456789")
    out: dict[str, JSON] = {}
    out["grow"] = outcome(lambda: os.truncate(f, 100_000))
    out["after_grow"] = outcome(lambda: info(f))
    data = f.read_bytes()
    out["grown_data"] = [data[:10].decode(), data[10:] == bytes(len(data) - 10)]
    out["shrink"] = outcome(lambda: os.truncate(f, 3))
    out["after_shrink"] = outcome(lambda: content(f))
    with opened(f, os.O_RDWR) as fd:
        out["ftruncate"] = outcome(lambda: os.ftruncate(fd, 5))
        out["fsize"] = os.fstat(fd).st_size
        out["pread"] = os.pread(fd, 100, 0).decode("latin-1")
        out["ftruncate_zero"] = outcome(lambda: os.ftruncate(fd, 0))
        out["fsize_zero"] = os.fstat(fd).st_size
    out["final"] = outcome(lambda: info(f))
    return out


@case
def truncate_errors(d: Path) -> JSON:
    write_file(d / "f", b"abc")
    (d / "sub").mkdir()
    out: dict[str, JSON] = {
        "dir": outcome(lambda: os.truncate(d / "sub", 0)),
        "missing": outcome(lambda: os.truncate(d / "missing", 0)),
        "negative": outcome(lambda: os.truncate(d / "f", -1)),
    }
    with opened(d / "f", os.O_RDONLY) as fd:
        out["readonly_fd"] = outcome(lambda: os.ftruncate(fd, 0))
    out["after"] = outcome(lambda: content(d / "f"))
    return out


@case
def utime_nanoseconds(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    (d / "sub").mkdir()
    out: dict[str, JSON] = {}
    out["set"] = outcome(lambda: os.utime(f, ns=T1_NS))
    out["after"] = outcome(lambda: times(f))
    out["set_big"] = outcome(lambda: os.utime(f, ns=T2_NS))
    out["after_big"] = outcome(lambda: times(f))
    out["dir"] = outcome(lambda: os.utime(d / "sub", ns=T1_NS))
    out["dir_after"] = outcome(lambda: times(d / "sub"))
    with opened(f, os.O_RDONLY) as fd:
        out["futime"] = outcome(lambda: os.utime(fd, ns=(5, 7)))
        out["futime_after"] = outcome(lambda: times(f))
    out["missing"] = outcome(lambda: os.utime(d / "missing", ns=T1_NS))
    return out


@case
def utime_negative_times(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    before_epoch = (-315_532_800 * 10**9 + 123, -1 * 10**9 + 999_999_999)
    return {
        "set": outcome(lambda: os.utime(f, ns=before_epoch)),
        "after": outcome(lambda: times(f)),
    }


@case
def utime_one_time_omitted(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    os.utime(f, ns=T1_NS)
    path = os.fsencode(f)
    return {
        "mtime_only": outcome(
            lambda: syscalls.utimensat(syscalls.AT_FDCWD, path, None, 9_000_000_009, 0)
        ),
        "after_mtime_only": outcome(lambda: times(f)),
        "atime_only": outcome(
            lambda: syscalls.utimensat(syscalls.AT_FDCWD, path, 8_000_000_008, None, 0)
        ),
        "after_atime_only": outcome(lambda: times(f)),
    }


@case
def utime_symlink_not_followed(d: Path) -> JSON:
    write_file(d / "t", b"x")
    os.symlink("t", d / "l")
    os.utime(d / "t", ns=T1_NS)
    out: dict[str, JSON] = {}
    out["lutime"] = outcome(lambda: os.utime(d / "l", ns=T2_NS, follow_symlinks=False))
    out["link"] = outcome(lambda: times(d / "l", follow=False))
    out["target"] = outcome(lambda: times(d / "t"))
    out["followed"] = outcome(lambda: os.utime(d / "l", ns=(11, 22)))
    out["target_after"] = outcome(lambda: times(d / "t"))
    # only the mtime: following the link may have refreshed its atime (relatime)
    out["link_mtime_after"] = outcome(lambda: os.lstat(d / "l").st_mtime_ns)
    return out


@case
def utime_now_advances(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    os.utime(f, ns=T1_NS)
    out: dict[str, JSON] = {"set_now": outcome(lambda: os.utime(f))}
    st = os.stat(f)
    out["advanced"] = [st.st_atime_ns > T1_NS[0], st.st_mtime_ns > T1_NS[1]]
    os.utime(f, ns=T1_NS)
    out["atime_now_only"] = outcome(lambda: syscalls.utimensat(
        syscalls.AT_FDCWD, os.fsencode(f), None, None, 0, atime_now=True))
    st = os.stat(f)
    out["only_atime_advanced"] = [st.st_atime_ns > T1_NS[0], st.st_mtime_ns == T1_NS[1]]
    return out


@case
def mtime_follows_changes(d: Path) -> JSON:
    f = d / "f"
    sub = d / "sub"
    write_file(f, b"x")
    sub.mkdir()
    out: dict[str, JSON] = {}

    def advanced_after(path: Path, change: Callable[[], object]) -> JSON:
        os.utime(path, ns=T1_NS)
        change()
        return os.stat(path).st_mtime_ns > T1_NS[1]

    out["write"] = advanced_after(f, lambda: write_file(f, b"more"))
    out["truncate"] = advanced_after(f, lambda: os.truncate(f, 1))
    out["dir_create"] = advanced_after(sub, lambda: write_file(sub / "c", b""))
    out["dir_rename"] = advanced_after(sub, lambda: os.rename(sub / "c", sub / "c2"))
    out["dir_unlink"] = advanced_after(sub, lambda: os.unlink(sub / "c2"))
    out["dir_mkdir"] = advanced_after(sub, lambda: os.mkdir(sub / "m"))
    out["dir_rmdir"] = advanced_after(sub, lambda: os.rmdir(sub / "m"))
    return out


# --- readdir -----------------------------------------------------------------------------------


@case
def readdir_types_and_sizes(d: Path) -> JSON:
    write_file(d / "file", b"x" * 1234)
    write_file(d / "empty", b"")
    (d / "dir").mkdir()
    os.symlink("file", d / "link")
    os.symlink("dir", d / "dirlink")
    os.symlink("nowhere", d / "dangling")
    os.link(d / "file", d / "hard")
    os.mkfifo(d / "fifo")
    os.mknod(d / "sock", stat.S_IFSOCK | 0o600)
    entries: list[JSON] = []
    with os.scandir(d) as it:
        for e in sorted(it, key=lambda e: e.name):
            st = e.stat(follow_symlinks=False)
            entries.append({
                "name": e.name,
                "is_dir": e.is_dir(follow_symlinks=False),
                "is_file": e.is_file(follow_symlinks=False),
                "is_symlink": e.is_symlink(),
                "followed_dir": e.is_dir(),
                "followed_file": e.is_file(),
                "stat": describe(st),
                "d_ino_is_st_ino": e.inode() == st.st_ino,
            })
    return entries


@case
def readdir_many_entries(d: Path) -> JSON:
    names = [f"entry-{i:04d}-" + "x" * (i % 50) for i in range(600)]
    for name in names:
        write_file(d / name, name.encode())
    listed = os.listdir(d)
    return {
        "count": len(listed),
        "unique": len(set(listed)),
        "sorted_equal": sorted(listed) == sorted(names),
        "sizes": sum(e.stat(follow_symlinks=False).st_size for e in os.scandir(d)),
    }


@case
def readdir_empty_and_errors(d: Path) -> JSON:
    (d / "empty").mkdir()
    write_file(d / "f", b"")
    return {
        "empty": outcome(lambda: listing(d / "empty")),
        "file": outcome(lambda: listing(d / "f")),
        "missing": outcome(lambda: listing(d / "missing")),
        "through_symlink": outcome(lambda: _listing_through_link(d)),
    }


def _listing_through_link(d: Path) -> JSON:
    os.symlink("empty", d / "el")
    write_file(d / "empty" / "inside", b"")
    return listing(d / "el")


@case
def readdir_remove_while_listing(d: Path) -> JSON:
    for i in range(300):
        write_file(d / f"f{i:03d}", b"")
    seen: list[str] = []
    with os.scandir(d) as it:
        for e in it:
            seen.append(e.name)
            os.unlink(e.path)
    return {"seen": len(seen), "unique": len(set(seen)), "left": listing(d)}


@case
def readdir_rmtree(d: Path) -> JSON:
    top = d / "top"
    for i in range(5):
        for j in range(40):
            sub = top / f"d{i}" / f"e{j % 3}"
            sub.mkdir(parents=True, exist_ok=True)
            write_file(sub / f"f{j}", b"data")
            os.symlink(f"f{j}", sub / f"l{j}")
    before = sum(len(files) + len(dirs) for _, dirs, files in os.walk(top))
    shutil.rmtree(top)
    return {"before": before, "left": listing(d)}


@case
def readdir_rewind_sees_new_entries(d: Path) -> JSON:
    write_file(d / "first", b"")
    out: dict[str, JSON] = {}
    with opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
        out["before"] = sorted(os.listdir(fd))  # listdir(fd) rewinds the stream first
        write_file(d / "second", b"")
        os.unlink(d / "first")
        out["after"] = sorted(os.listdir(fd))
    return out


@case
def subtree_root_attributes(d: Path) -> JSON:
    """The case directory may be the subtree's root itself: its attributes are the source's."""
    out: dict[str, JSON] = {"info": outcome(lambda: info(d))}
    out["chmod"] = outcome(lambda: os.chmod(d, 0o1777))
    out["after_chmod"] = outcome(lambda: info(d))
    out["utime"] = outcome(lambda: os.utime(d, ns=T1_NS))
    out["times"] = outcome(lambda: times(d))
    out["chown"] = outcome(lambda: os.chown(d, 1234, 5678))
    out["after_chown"] = outcome(lambda: info(d))
    out["xattr"] = outcome(lambda: os.setxattr(d, "user.root", b"r"))
    out["xattr_back"] = outcome(lambda: os.getxattr(d, "user.root").decode())
    out["xattr_remove"] = outcome(lambda: os.removexattr(d, "user.root"))
    out["access"] = os.access(d, os.W_OK | os.X_OK)
    os.chown(d, 0, 0)
    os.chmod(d, 0o755)
    out["restored"] = outcome(lambda: info(d))
    return out


@case
def kernel_caches_dropped_between_steps(d: Path) -> JSON:
    """The kernel forgets unused dentries and inodes (FORGET reaches the daemon); every name
    must then be found again as it is, and O_CREAT on an existing name takes the
    atomic-open path of a name the kernel no longer knows."""
    (d / "sub").mkdir()
    write_file(d / "sub" / "f", b"content")
    os.link(d / "sub" / "f", d / "h")
    os.symlink("sub/f", d / "l")

    def drop() -> None:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write("2\n")

    out: dict[str, JSON] = {}
    drop()
    out["create_existing"] = open_close(d / "sub" / "f", os.O_CREAT | os.O_WRONLY, 0o600)
    out["f"] = outcome(lambda: info(d / "sub" / "f"))
    drop()
    out["excl_existing"] = open_close(d / "h", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    drop()
    out["via_link"] = outcome(lambda: content(d / "l"))
    drop()
    out["tree"] = snapshot(d)
    drop()
    out["trunc_existing"] = open_close(d / "h", os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    out["h"] = outcome(lambda: info(d / "h"))
    return out


@case
def readdir_lists_dot_entries(d: Path) -> JSON:
    (d / "sub").mkdir()
    write_file(d / "sub" / "f", b"")
    # `ls -a -f`: every entry as getdents returns it, `.` and `..` included, unsorted
    listed = subprocess.run(["ls", "-a", "-f", str(d / "sub")], capture_output=True,
                            check=True, text=True).stdout.split()
    return sorted(listed)


# --- files ----------------------------------------------------------------------------------------


@case
def file_create_write_read(d: Path) -> JSON:
    f = d / "f"
    out: dict[str, JSON] = {}
    with opened(f, os.O_CREAT | os.O_RDWR, 0o640) as fd:
        out["write"] = os.write(fd, b"hello world")
        out["tell"] = os.lseek(fd, 0, os.SEEK_CUR)
        out["read_at_end"] = os.read(fd, 10).decode()
        os.lseek(fd, 0, os.SEEK_SET)
        out["read"] = os.read(fd, 5).decode()
        out["read_rest"] = os.read(fd, 100).decode()
        out["overwrite"] = os.pwrite(fd, b"W", 6)
        out["seek_end"] = os.lseek(fd, 0, os.SEEK_END)
        out["fstat"] = describe(os.fstat(fd))
    out["content"] = outcome(lambda: content(f))
    out["stat"] = outcome(lambda: info(f))
    return out


@case
def file_open_flag_errors(d: Path) -> JSON:
    write_file(d / "f", b"data")
    (d / "sub").mkdir()
    os.symlink("f", d / "link")
    out: dict[str, JSON] = {
        "missing": open_close(d / "missing", os.O_RDONLY),
        "missing_parent": open_close(d / "nope" / "x", os.O_CREAT | os.O_WRONLY),
        "dir_for_write": open_close(d / "sub", os.O_WRONLY),
        "dir_rdonly": open_close(d / "sub", os.O_RDONLY),
        "file_as_dir": open_close(d / "f", os.O_RDONLY | os.O_DIRECTORY),
        "nofollow": open_close(d / "link", os.O_RDONLY | os.O_NOFOLLOW),
        "creat_nofollow": open_close(d / "link", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW),
        "path_nofollow": open_close(d / "link", os.O_PATH | os.O_NOFOLLOW),
        "follow": open_close(d / "link", os.O_RDONLY),
        "dir_creat": open_close(d / "sub", os.O_CREAT | os.O_RDONLY),
    }
    with opened(d / "f", os.O_WRONLY) as fd:
        out["read_on_wronly"] = outcome(lambda: os.read(fd, 1).decode())
    with opened(d / "f", os.O_RDONLY) as fd:
        out["write_on_rdonly"] = outcome(lambda: os.write(fd, b"x"))
    with opened(d / "sub", os.O_RDONLY) as fd:
        out["read_on_dir"] = outcome(lambda: os.read(fd, 1).decode())
    out["after"] = outcome(lambda: content(d / "f"))
    return out


@case
def file_o_excl(d: Path) -> JSON:
    write_file(d / "f", b"keep")
    (d / "sub").mkdir()
    os.symlink("nowhere", d / "dangling")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    return {
        "existing": open_close(d / "f", flags),
        "existing_dir": open_close(d / "sub", flags),
        "dangling_symlink": open_close(d / "dangling", flags),
        "new": open_close(d / "new", flags, 0o640),
        "new_info": outcome(lambda: info(d / "new")),
        "new_again": open_close(d / "new", flags),
        "kept": outcome(lambda: content(d / "f")),
        "names": listing(d),
    }


@case
def file_o_trunc(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x" * 100)
    out: dict[str, JSON] = {}
    out["wronly_trunc"] = open_close(f, os.O_WRONLY | os.O_TRUNC)
    out["after_wronly"] = outcome(lambda: info(f))
    write_file(f, b"y" * 50)
    out["rdonly_trunc"] = open_close(f, os.O_RDONLY | os.O_TRUNC)
    out["after_rdonly"] = outcome(lambda: info(f))
    write_file(f, b"z" * 50)
    with opened(f, os.O_RDWR | os.O_TRUNC) as fd:
        out["rdwr_size"] = os.fstat(fd).st_size
        os.write(fd, b"new")
    out["content"] = outcome(lambda: content(f))
    return out


@case
def file_append(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"start")
    out: dict[str, JSON] = {}
    with opened(f, os.O_WRONLY | os.O_APPEND) as fd:
        os.lseek(fd, 0, os.SEEK_SET)
        out["write"] = os.write(fd, b"+one")
        out["tell"] = os.lseek(fd, 0, os.SEEK_CUR)
        out["pwrite"] = os.pwrite(fd, b"+two", 0)  # Linux appends whatever the offset
    with opened(f, os.O_WRONLY) as other, opened(f, os.O_WRONLY | os.O_APPEND) as app:
        os.pwrite(other, b"0123456789ABCDEF", 0)  # grows the file under the appender
        os.write(app, b"+tail")
    out["content"] = outcome(lambda: content(f))
    return out


@case
def file_pread_pwrite_holes(d: Path) -> JSON:
    f = d / "f"
    out: dict[str, JSON] = {}
    with opened(f, os.O_CREAT | os.O_RDWR) as fd:
        out["far"] = os.pwrite(fd, b"END", 1_000_000)
        out["size"] = os.fstat(fd).st_size
        out["hole"] = os.pread(fd, 16, 500_000) == bytes(16)
        out["tail"] = os.pread(fd, 10, 999_999).decode("latin-1")
        out["past_eof"] = os.pread(fd, 10, 2_000_000).decode()
        out["start"] = os.pwrite(fd, b"BEGIN", 0)
        out["head"] = os.pread(fd, 8, 0).decode("latin-1")
        out["offset_unchanged"] = os.lseek(fd, 0, os.SEEK_CUR)
        os.fsync(fd)
        st = os.fstat(fd)
        out["blocks"] = [st.st_blocks, st.st_blksize]
    out["stat"] = outcome(lambda: info(f))
    return out


@case
def file_fsync(d: Path) -> JSON:
    f = d / "f"
    out: dict[str, JSON] = {}
    with opened(f, os.O_CREAT | os.O_WRONLY) as fd:
        os.write(fd, b"durable")
        out["fsync"] = outcome(lambda: os.fsync(fd))
        out["fdatasync"] = outcome(lambda: os.fdatasync(fd))
    with opened(f, os.O_RDONLY) as fd:
        out["fsync_rdonly"] = outcome(lambda: os.fsync(fd))
    with opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
        out["fsync_dir"] = outcome(lambda: os.fsync(fd))
    out["content"] = outcome(lambda: content(f))
    return out


@case
def file_unlinked_while_open(d: Path) -> JSON:
    f = d / "f"
    out: dict[str, JSON] = {}
    with opened(f, os.O_CREAT | os.O_RDWR) as fd:
        os.write(fd, b"before")
        out["unlink"] = outcome(lambda: os.unlink(f))
        out["exists"] = f.exists()
        out["nlink"] = os.fstat(fd).st_nlink
        out["write"] = os.write(fd, b"-after")
        out["pread"] = os.pread(fd, 100, 0).decode()
        out["ftruncate"] = outcome(lambda: os.ftruncate(fd, 4))
        out["fchmod"] = outcome(lambda: os.fchmod(fd, 0o600))
        out["fstat"] = describe(os.fstat(fd))
        out["pread_after"] = os.pread(fd, 100, 0).decode()
        out["fsync"] = outcome(lambda: os.fsync(fd))
        out["recreate"] = open_close(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        out["new_size"] = outcome(lambda: info(f))
    out["names"] = listing(d)
    return out


@case
def file_renamed_while_open(d: Path) -> JSON:
    out: dict[str, JSON] = {}
    with opened(d / "a", os.O_CREAT | os.O_RDWR) as fd:
        os.write(fd, b"one")
        os.rename(d / "a", d / "b")
        os.write(fd, b"two")
        out["b"] = outcome(lambda: content(d / "b"))
        out["a"] = outcome(lambda: content(d / "a"))
        write_file(d / "c", b"replacement")
        os.rename(d / "c", d / "b")  # the open file loses its last name
        out["fd_nlink"] = os.fstat(fd).st_nlink
        out["fd_data"] = os.pread(fd, 100, 0).decode()
        out["b_now"] = outcome(lambda: content(d / "b"))
    return out


@case
def file_large_io(d: Path) -> JSON:
    f = d / "f"
    data = random.Random(7).randbytes(4 * MIB + 12345)
    out: dict[str, JSON] = {}
    with opened(f, os.O_CREAT | os.O_RDWR) as fd:
        out["written"] = os.write(fd, data)
        out["size"] = os.fstat(fd).st_size
        reads: list[JSON] = []
        for off in (0, READ_CHUNK - 1, READ_CHUNK, READ_CHUNK + 1, 3 * READ_CHUNK - 7,
                    4 * MIB - 100, len(data) - 1, len(data), len(data) + 5):
            got = os.pread(fd, 200_000, off)
            reads.append([off, len(got), got == data[off : off + 200_000]])
        out["preads"] = reads
    chunks = []
    with opened(f, os.O_RDONLY) as fd:
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(len(chunk))
    out["sequential"] = [len(chunks), sum(chunks)]
    whole = f.read_bytes()
    out["digest_equal"] = whole == data
    # one big write in the middle, across request boundaries
    with opened(f, os.O_WRONLY) as fd:
        patch = bytes(range(256)) * (3 * MIB // 256)
        out["patch"] = os.pwrite(fd, patch, READ_CHUNK + 3)
    expected = data[: READ_CHUNK + 3] + patch + data[READ_CHUNK + 3 + len(patch) :]
    out["patched_equal"] = f.read_bytes() == expected
    return out


@case
def file_two_descriptors_see_each_other(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"aaaa")
    out: dict[str, JSON] = {}
    with opened(f, os.O_RDWR) as one, opened(f, os.O_RDWR) as two:
        os.pwrite(one, b"BB", 1)
        out["two_sees"] = os.pread(two, 10, 0).decode()
        os.ftruncate(two, 2)
        out["one_sees"] = os.pread(one, 10, 0).decode()
        out["one_size"] = os.fstat(one).st_size
    return out


@case
def fallocate_posix(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"abc")
    out: dict[str, JSON] = {}
    with opened(f, os.O_RDWR) as fd:
        out["grow"] = outcome(lambda: os.posix_fallocate(fd, 0, 65536))
        out["size"] = os.fstat(fd).st_size
        out["inside"] = outcome(lambda: os.posix_fallocate(fd, 100, 10))
        out["size_inside"] = os.fstat(fd).st_size
        out["beyond"] = outcome(lambda: os.posix_fallocate(fd, 100_000, 5000))
        out["size_beyond"] = os.fstat(fd).st_size
        out["kept"] = os.pread(fd, 3, 0).decode()
        out["zeros"] = os.pread(fd, 1000, 1000) == bytes(1000)
    with opened(f, os.O_RDONLY) as fd:
        out["rdonly"] = outcome(lambda: os.posix_fallocate(fd, 0, 10))
    return out


@case
def file_o_direct_aligned(d: Path) -> JSON:
    f = d / "f"
    out: dict[str, JSON] = {}
    wbuf = mmap.mmap(-1, 8192)  # page-aligned, as O_DIRECT on ext4 needs
    wbuf.write(bytes(range(256)) * 32)
    rbuf = mmap.mmap(-1, 8192)
    try:
        with opened(f, os.O_CREAT | os.O_RDWR | os.O_DIRECT) as fd:
            out["write"] = outcome(lambda: os.pwritev(fd, [wbuf], 0))
            out["write_second_block"] = outcome(lambda: os.pwritev(fd, [wbuf], 8192))
            out["read"] = outcome(lambda: os.preadv(fd, [rbuf], 4096))
            out["same"] = rbuf[:4096] == wbuf[4096:] and rbuf[4096:] == wbuf[:4096]
            out["size"] = os.fstat(fd).st_size
        out["buffered_read"] = outcome(lambda: digest(f.read_bytes()))
    finally:
        wbuf.close()
        rbuf.close()
    return out


@case
def file_mmap_shared(d: Path) -> JSON:
    f = d / "f"
    write_file(f, bytes(10_000))
    out: dict[str, JSON] = {}
    with opened(f, os.O_RDWR) as fd:
        m = mmap.mmap(fd, 10_000)
        try:
            m[0:5] = b"hello"
            m[8000:8005] = b"world"
            m.flush()
        finally:
            m.close()
    data = f.read_bytes()
    out["mapped_writes"] = [data[:5].decode(), data[8000:8005].decode(), len(data)]
    with opened(f, os.O_RDONLY) as fd:
        m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        try:
            os.truncate(f, 20_000)
            with opened(f, os.O_WRONLY) as wfd:
                os.pwrite(wfd, b"WRITE", 100)
            out["map_sees_write"] = m[100:105].decode()
        finally:
            m.close()
    out["size"] = outcome(lambda: info(f))
    return out


@case
def file_copy_and_sendfile(d: Path) -> JSON:
    src = d / "src"
    data = random.Random(3).randbytes(300_000)
    write_file(src, data)
    out: dict[str, JSON] = {}
    with opened(src, os.O_RDONLY) as ifd, opened(d / "cfr", os.O_CREAT | os.O_WRONLY) as ofd:
        total = 0
        while total < len(data):
            n = os.copy_file_range(ifd, ofd, len(data) - total)
            if n == 0:
                break
            total += n
        out["copy_file_range"] = total
    with opened(src, os.O_RDONLY) as ifd, opened(d / "sf", os.O_CREAT | os.O_WRONLY) as ofd:
        sent = 0
        while sent < len(data):
            n = os.sendfile(ofd, ifd, sent, len(data) - sent)
            if n == 0:
                break
            sent += n
        out["sendfile"] = sent
    shutil.copyfile(src, d / "copy")
    out["equal"] = [(d / n).read_bytes() == data for n in ("cfr", "sf", "copy")]
    return out


@case
def file_copy2_keeps_metadata(d: Path) -> JSON:
    src = d / "src"
    write_file(src, b"payload", 0o640)
    os.setxattr(src, "user.tag", b"copied")
    os.utime(src, ns=T1_NS)
    out: dict[str, JSON] = {}
    out["copy2"] = outcome(lambda: Path(str(shutil.copy2(src, d / "dst"))).name)
    out["info"] = outcome(lambda: info(d / "dst"))
    # mtime only: copying read src, so its atime (copied too) is "now" (relatime)
    out["mtime"] = outcome(lambda: os.stat(d / "dst").st_mtime_ns)
    out["xattr"] = outcome(lambda: os.getxattr(d / "dst", "user.tag").decode())
    out["data"] = outcome(lambda: content(d / "dst"))
    return out


@case
def file_flock_is_per_open_file(d: Path) -> JSON:
    write_file(d / "f", b"")
    out: dict[str, JSON] = {}
    with opened(d / "f", os.O_RDONLY) as one, opened(d / "f", os.O_RDONLY) as two:
        out["ex"] = outcome(lambda: fcntl.flock(one, fcntl.LOCK_EX | fcntl.LOCK_NB))
        out["other_ex"] = outcome(lambda: fcntl.flock(two, fcntl.LOCK_EX | fcntl.LOCK_NB))
        out["other_sh"] = outcome(lambda: fcntl.flock(two, fcntl.LOCK_SH | fcntl.LOCK_NB))
        out["unlock"] = outcome(lambda: fcntl.flock(one, fcntl.LOCK_UN))
        out["other_now"] = outcome(lambda: fcntl.flock(two, fcntl.LOCK_EX | fcntl.LOCK_NB))
        out["posix"] = outcome(lambda: fcntl.lockf(two, fcntl.LOCK_SH | fcntl.LOCK_NB))
    return out


@case
def file_size_limits(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"x")
    out: dict[str, JSON] = {}
    out["sparse_1tib"] = outcome(lambda: os.truncate(f, 1 << 40))
    out["size"] = outcome(lambda: os.stat(f).st_size)
    out["too_big"] = outcome(lambda: os.truncate(f, 1 << 50))
    with opened(f, os.O_WRONLY) as fd:
        out["write_far"] = outcome(lambda: os.pwrite(fd, b"end", (1 << 40) - 3))
        out["write_too_far"] = outcome(lambda: os.pwrite(fd, b"x", 1 << 50))
    out["tail"] = outcome(lambda: _pread_path(f, 3, (1 << 40) - 3))
    out["final"] = outcome(lambda: os.stat(f).st_size)
    os.truncate(f, 4)  # the snapshot that follows reads every file
    return out


def _pread_path(path: Path, size: int, offset: int) -> JSON:
    with opened(path, os.O_RDONLY) as fd:
        return os.pread(fd, size, offset).decode("latin-1")


@case
def umask_applies_as_native(d: Path) -> JSON:
    out: dict[str, JSON] = {}
    old = os.umask(0)
    try:
        for mask in (0o000, 0o077, 0o027, 0o002):
            os.umask(mask)
            sub = d / f"m{mask:03o}"
            sub.mkdir(0o777)
            write_file(sub / "file", b"", 0o666)
            os.mkfifo(sub / "fifo", 0o666)
            os.mknod(sub / "sock", stat.S_IFSOCK | 0o777)
            (sub / "dir").mkdir(0o777)
            out[oct(mask)] = {n: oct(stat.S_IMODE(os.lstat(sub / n).st_mode))
                              for n in ("", "file", "fifo", "sock", "dir")}
    finally:
        os.umask(old)
    return out


@case
def odd_names(d: Path) -> JSON:
    names = [b"\xff\xfe", b"a\nb", b" lead", b"trail ", b"-", b"...", b".hidden", b"sp ace",
             b"back\\slash", b"\xc3\xa9t\xc3\xa9", b"*?[", b"tab\there"]
    base = os.fsencode(d)
    out: dict[str, JSON] = {}
    for name in names:
        path = os.path.join(base, name)
        out[name.hex()] = open_close(path, os.O_CREAT | os.O_WRONLY)
    out["listed"] = sorted(n.hex() for n in os.listdir(base))
    out["dot"] = open_close(os.path.join(base, b"."), os.O_CREAT | os.O_WRONLY)
    out["dotdot_mkdir"] = outcome(lambda: os.mkdir(os.path.join(base, b"..")))
    out["rename_odd"] = outcome(lambda: os.rename(os.path.join(base, b"a\nb"),
                                                  os.path.join(base, b"\x01\x02")))
    out["after"] = sorted(n.hex() for n in os.listdir(base))
    return out


@case
def dir_fd_survives_rename_and_removal(d: Path) -> JSON:
    (d / "a").mkdir()
    out: dict[str, JSON] = {}
    with opened(d / "a", os.O_RDONLY | os.O_DIRECTORY) as dfd:
        os.rename(d / "a", d / "b")
        out["create_at"] = outcome(
            lambda: os.close(os.open("child", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)))
        out["seen_at_new_name"] = outcome(lambda: listing(d / "b"))
        out["stat_at"] = outcome(lambda: describe(os.stat("child", dir_fd=dfd)))
        os.unlink(d / "b" / "child")
        os.rmdir(d / "b")
        out["create_in_removed"] = outcome(
            lambda: os.close(os.open("x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)))
        out["mkdir_in_removed"] = outcome(lambda: os.mkdir("y", dir_fd=dfd))
        out["list_removed"] = outcome(lambda: sorted(os.listdir(dfd)))
        out["fstat_removed"] = outcome(lambda: os.fstat(dfd).st_nlink)
    out["names"] = listing(d)
    return out


# POSIX ACL xattr blobs (linux/posix_acl_xattr.h): version 2, then (tag, perm, id) entries.
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@case
def posix_acl_access_and_default(d: Path) -> JSON:
    f = d / "f"
    write_file(f, b"", 0o644)
    (d / "sub").mkdir(0o755)
    access = _acl((_ACL_USER_OBJ, 6, _NO_ID), (_ACL_USER, 6, 1234), (_ACL_GROUP_OBJ, 4, _NO_ID),
                  (_ACL_MASK, 6, _NO_ID), (_ACL_OTHER, 4, _NO_ID))
    default = _acl((_ACL_USER_OBJ, 7, _NO_ID), (_ACL_USER, 5, 1234), (_ACL_GROUP_OBJ, 5, _NO_ID),
                   (_ACL_MASK, 7, _NO_ID), (_ACL_OTHER, 5, _NO_ID))
    out: dict[str, JSON] = {}
    out["set_access"] = outcome(lambda: os.setxattr(f, "system.posix_acl_access", access))
    out["mode_after"] = outcome(lambda: info(f))
    out["get_access"] = outcome(lambda: os.getxattr(f, "system.posix_acl_access").hex())
    out["chmod"] = outcome(lambda: os.chmod(f, 0o600))
    out["get_after_chmod"] = outcome(lambda: os.getxattr(f, "system.posix_acl_access").hex())
    out["set_default"] = outcome(
        lambda: os.setxattr(d / "sub", "system.posix_acl_default", default))
    out["get_default"] = outcome(
        lambda: os.getxattr(d / "sub", "system.posix_acl_default").hex())
    # umask 0: with a default ACL the native kernel ignores the umask, while FUSE strips it
    # before the daemon sees the mode (FUSE_DONT_MASK is not negotiated; kernel-facts §8).
    old_umask = os.umask(0)
    try:
        write_file(d / "sub" / "inherits", b"", 0o666)
        (d / "sub" / "inherits_dir").mkdir(0o777)
    finally:
        os.umask(old_umask)
    out["child"] = outcome(lambda: info(d / "sub" / "inherits"))
    out["child_acl"] = outcome(
        lambda: os.getxattr(d / "sub" / "inherits", "system.posix_acl_access").hex())
    out["child_dir"] = outcome(lambda: info(d / "sub" / "inherits_dir"))
    out["child_dir_default"] = outcome(
        lambda: os.getxattr(d / "sub" / "inherits_dir", "system.posix_acl_default").hex())
    out["remove"] = outcome(lambda: os.removexattr(f, "system.posix_acl_access"))
    out["mode_removed"] = outcome(lambda: info(f))
    out["list"] = outcome(lambda: sorted(os.listxattr(d / "sub")))
    return out


# --- directories ----------------------------------------------------------------------------------


@case
def mkdir_and_errors(d: Path) -> JSON:
    write_file(d / "f", b"")
    os.symlink("f", d / "link")
    out: dict[str, JSON] = {"parent_before": outcome(lambda: info(d))}
    out["mkdir"] = outcome(lambda: os.mkdir(d / "sub", 0o750))
    out["sub"] = outcome(lambda: info(d / "sub"))
    out["parent_after"] = outcome(lambda: info(d))
    out["nested"] = outcome(lambda: os.mkdir(d / "sub" / "in", 0o700))
    out["sub_after"] = outcome(lambda: info(d / "sub"))
    out["exists"] = outcome(lambda: os.mkdir(d / "sub"))
    out["over_file"] = outcome(lambda: os.mkdir(d / "f"))
    out["over_symlink"] = outcome(lambda: os.mkdir(d / "link"))
    out["missing_parent"] = outcome(lambda: os.mkdir(d / "no" / "x"))
    out["trailing_slash"] = outcome(lambda: os.mkdir(f"{d}/slash/"))
    out["special_bits"] = outcome(lambda: os.mkdir(d / "special", 0o3777))
    out["special_info"] = outcome(lambda: info(d / "special"))
    out["sticky_file"] = open_close(d / "sticky", os.O_CREAT | os.O_WRONLY, 0o1644)
    out["sticky_info"] = outcome(lambda: info(d / "sticky"))
    out["names"] = listing(d)
    return out


@case
def rmdir_and_errors(d: Path) -> JSON:
    (d / "full" / "child").mkdir(parents=True)
    (d / "empty").mkdir()
    write_file(d / "f", b"")
    os.symlink("empty", d / "dirlink")
    out: dict[str, JSON] = {"before": outcome(lambda: info(d))}
    out["not_empty"] = outcome(lambda: os.rmdir(d / "full"))
    out["file"] = outcome(lambda: os.rmdir(d / "f"))
    out["missing"] = outcome(lambda: os.rmdir(d / "missing"))
    out["symlink"] = outcome(lambda: os.rmdir(d / "dirlink"))
    out["dot"] = outcome(lambda: os.rmdir(f"{d}/empty/."))
    out["dotdot"] = outcome(lambda: os.rmdir(f"{d}/full/child/.."))
    out["empty"] = outcome(lambda: os.rmdir(d / "empty"))
    out["child"] = outcome(lambda: os.rmdir(d / "full" / "child"))
    out["full_now"] = outcome(lambda: os.rmdir(d / "full"))
    out["after"] = outcome(lambda: info(d))
    out["names"] = listing(d)
    return out


@case
def unlink_and_errors(d: Path) -> JSON:
    write_file(d / "f", b"")
    write_file(d / "target", b"kept")
    os.symlink("target", d / "link")
    (d / "sub").mkdir()
    return {
        "dir": outcome(lambda: os.unlink(d / "sub")),
        "missing": outcome(lambda: os.unlink(d / "missing")),
        "trailing_slash": outcome(lambda: os.unlink(f"{d}/f/")),
        "through_file": outcome(lambda: os.unlink(d / "f" / "x")),
        "file": outcome(lambda: os.unlink(d / "f")),
        "again": outcome(lambda: os.unlink(d / "f")),
        "symlink": outcome(lambda: os.unlink(d / "link")),
        "target": outcome(lambda: content(d / "target")),
        "names": listing(d),
    }


# --- rename ---------------------------------------------------------------------------------------


@case
def rename_file_replaces_file(d: Path) -> JSON:
    write_file(d / "a", b"from a")
    write_file(d / "b", b"old b")
    with opened(d / "b", os.O_RDONLY) as held:
        result = outcome(lambda: os.rename(d / "a", d / "b"))
        held_data = os.read(held, 100).decode()
    return {
        "rename": result,
        "b": outcome(lambda: content(d / "b")),
        "a": outcome(lambda: content(d / "a")),
        "held_old": held_data,
        "names": listing(d),
    }


@case
def rename_directories(d: Path) -> JSON:
    (d / "src" / "inner").mkdir(parents=True)
    (d / "empty").mkdir()
    (d / "full" / "x").mkdir(parents=True)
    write_file(d / "f", b"")
    out: dict[str, JSON] = {
        "onto_nonempty": outcome(lambda: os.rename(d / "src", d / "full")),
        "onto_file": outcome(lambda: os.rename(d / "src", d / "f")),
        "file_onto_dir": outcome(lambda: os.rename(d / "f", d / "empty")),
        "into_itself": outcome(lambda: os.rename(d / "src", d / "src" / "inner" / "new")),
        "onto_ancestor": outcome(lambda: os.rename(d / "src" / "inner", d / "src")),
        "onto_empty": outcome(lambda: os.rename(d / "src", d / "empty")),
        "after": outcome(lambda: listing(d)),
        "moved": outcome(lambda: listing(d / "empty")),
        "moved_info": outcome(lambda: info(d / "empty")),
        "parent": outcome(lambda: info(d)),
        "across": outcome(lambda: os.rename(d / "empty" / "inner", d / "full" / "inner")),
        "full": outcome(lambda: info(d / "full")),
        "full_names": outcome(lambda: listing(d / "full")),
    }
    return out


@case
def rename_missing_and_trailing_slash(d: Path) -> JSON:
    write_file(d / "f", b"")
    (d / "sub").mkdir()
    return {
        "missing": outcome(lambda: os.rename(d / "missing", d / "x")),
        "missing_target_dir": outcome(lambda: os.rename(d / "f", d / "nodir" / "x")),
        "file_slash": outcome(lambda: os.rename(f"{d}/f/", d / "g")),
        "to_slash": outcome(lambda: os.rename(d / "f", f"{d}/g/")),
        "dir_slash": outcome(lambda: os.rename(f"{d}/sub/", f"{d}/sub2/")),
        "names": listing(d),
    }


@case
def rename_onto_itself(d: Path) -> JSON:
    write_file(d / "a", b"same")
    os.link(d / "a", d / "hard")
    (d / "sub").mkdir()
    return {
        "self": outcome(lambda: os.rename(d / "a", d / "a")),
        "dir_self": outcome(lambda: os.rename(d / "sub", d / "sub")),
        "hardlink": outcome(lambda: os.rename(d / "a", d / "hard")),  # a no-op: both stay
        "names": listing(d),
        "a": outcome(lambda: info(d / "a")),
        "data": outcome(lambda: content(d / "hard")),
    }


@case
def rename_symlink_moves_link(d: Path) -> JSON:
    write_file(d / "t", b"x")
    os.symlink("t", d / "l")
    (d / "sub").mkdir()
    return {
        "rename": outcome(lambda: os.rename(d / "l", d / "sub" / "l")),
        "target": outcome(lambda: os.readlink(d / "sub" / "l")),
        "dangling_now": outcome(lambda: info(d / "sub" / "l")),
        "back": outcome(lambda: os.rename(d / "sub" / "l", d / "l2")),
        "works": outcome(lambda: content(d / "l2")),
    }


@case
def rename_noreplace(d: Path) -> JSON:
    write_file(d / "a", b"a")
    write_file(d / "b", b"b")
    (d / "sub").mkdir()
    flag = syscalls.RENAME_NOREPLACE
    return {
        "onto_existing": renameat2(d / "a", d / "b", flag),
        "onto_dir": renameat2(d / "a", d / "sub", flag),
        "missing": renameat2(d / "missing", d / "c", flag),
        "to_new": renameat2(d / "a", d / "c", flag),
        "across": renameat2(d / "c", d / "sub" / "c", flag),
        "names": listing(d),
        "sub": listing(d / "sub"),
        "b": outcome(lambda: content(d / "b")),
    }


@case
def rename_exchange(d: Path) -> JSON:
    write_file(d / "f", b"file")
    (d / "dir").mkdir()
    write_file(d / "dir" / "inside", b"i")
    (d / "other").mkdir()
    write_file(d / "other" / "g", b"g")
    flag = syscalls.RENAME_EXCHANGE
    return {
        "swap": renameat2(d / "f", d / "dir", flag),
        "f_now": outcome(lambda: info(d / "f")),
        "dir_now": outcome(lambda: content(d / "dir")),
        "f_inside": outcome(lambda: listing(d / "f")),
        "across": renameat2(d / "dir", d / "other" / "g", flag),
        "other": outcome(lambda: {n: content(d / "other" / n) for n in os.listdir(d / "other")}),
        "dir_after": outcome(lambda: content(d / "dir")),
        "missing_new": renameat2(d / "dir", d / "missing", flag),
        "missing_old": renameat2(d / "missing", d / "dir", flag),
        "both_flags": renameat2(d / "f", d / "dir", flag | syscalls.RENAME_NOREPLACE),
        "self": renameat2(d / "f", d / "f", flag),
        "names": listing(d),
    }


# --- links ----------------------------------------------------------------------------------------


@case
def link_counts_and_errors(d: Path) -> JSON:
    write_file(d / "a", b"shared")
    (d / "sub").mkdir()
    out: dict[str, JSON] = {}
    out["link"] = outcome(lambda: os.link(d / "a", d / "b"))
    out["a"] = outcome(lambda: info(d / "a"))
    out["b"] = outcome(lambda: info(d / "b"))
    out["same_ino"] = os.stat(d / "a").st_ino == os.stat(d / "b").st_ino
    out["other_ino"] = os.stat(d / "a").st_ino != os.stat(d / "sub").st_ino
    out["same_dev"] = os.stat(d / "a").st_dev == os.stat(d / "sub").st_dev == os.stat(d).st_dev
    out["into_sub"] = outcome(lambda: os.link(d / "b", d / "sub" / "c"))
    out["count3"] = outcome(lambda: info(d / "a"))
    write_file(d / "b", b"changed via b")
    out["a_data"] = outcome(lambda: content(d / "a"))
    out["existing"] = outcome(lambda: os.link(d / "a", d / "b"))
    out["dir"] = outcome(lambda: os.link(d / "sub", d / "sublink"))
    out["missing"] = outcome(lambda: os.link(d / "missing", d / "x"))
    out["missing_dir"] = outcome(lambda: os.link(d / "a", d / "nodir" / "x"))
    out["unlink_a"] = outcome(lambda: os.unlink(d / "a"))
    out["b_after"] = outcome(lambda: info(d / "b"))
    out["c_after"] = outcome(lambda: info(d / "sub" / "c"))
    out["names"] = listing(d)
    return out


@case
def link_symlinks(d: Path) -> JSON:
    write_file(d / "t", b"target")
    os.symlink("t", d / "l")
    out: dict[str, JSON] = {}
    out["nofollow"] = outcome(lambda: os.link(d / "l", d / "l2", follow_symlinks=False))
    out["l2"] = outcome(lambda: info(d / "l2", follow=False))
    out["l2_target"] = outcome(lambda: os.readlink(d / "l2"))
    out["follow"] = outcome(lambda: os.link(d / "l", d / "t2", follow_symlinks=True))
    out["t2"] = outcome(lambda: info(d / "t2", follow=False))
    out["t"] = outcome(lambda: info(d / "t"))
    return out


# --- symlinks -------------------------------------------------------------------------------------


@case
def symlink_relative(d: Path) -> JSON:
    (d / "sub").mkdir()
    write_file(d / "sub" / "f", b"via relative")
    out: dict[str, JSON] = {}
    out["create"] = outcome(lambda: os.symlink("sub/f", d / "l"))
    out["up"] = outcome(lambda: os.symlink("../sub/f", d / "sub" / "up"))
    out["readlink"] = outcome(lambda: os.readlink(d / "l"))
    out["read"] = outcome(lambda: content(d / "l"))
    out["read_up"] = outcome(lambda: content(d / "sub" / "up"))
    out["lstat"] = outcome(lambda: info(d / "l", follow=False))
    out["dirlink"] = outcome(lambda: os.symlink("sub", d / "dl"))
    out["through_dirlink"] = outcome(lambda: listing(d / "dl"))
    out["write_through"] = outcome(lambda: write_file(d / "l", b"written through"))
    out["target_after"] = outcome(lambda: content(d / "sub" / "f"))
    return out


@case
def symlink_absolute(d: Path) -> JSON:
    write_file(d / "f", b"via absolute")
    target = str(d / "f")
    os.symlink(target, d / "abs")
    return {
        "readlink": outcome(lambda: os.readlink(d / "abs").replace(str(d), "<dir>")),
        "read": outcome(lambda: content(d / "abs")),
        "lstat_size_is_len": os.lstat(d / "abs").st_size == len(target),
    }


@case
def symlink_dangling_followed_by_kernel(d: Path) -> JSON:
    os.symlink("created", d / "dangling")
    out: dict[str, JSON] = {}
    out["readlink"] = outcome(lambda: os.readlink(d / "dangling"))
    out["open"] = open_close(d / "dangling", os.O_RDONLY)
    out["creat_excl"] = open_close(d / "dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    out["creat"] = outcome(lambda: write_file(d / "dangling", b"made through the link"))
    out["names"] = listing(d)
    out["created"] = outcome(lambda: content(d / "created"))
    out["link_still"] = outcome(lambda: info(d / "dangling", follow=False))
    return out


@case
def symlink_errors_and_limits(d: Path) -> JSON:
    write_file(d / "f", b"")
    return {
        "exists": outcome(lambda: os.symlink("x", d / "f")),
        "readlink_file": outcome(lambda: os.readlink(d / "f")),
        "readlink_missing": outcome(lambda: os.readlink(d / "missing")),
        "long": outcome(lambda: os.symlink("t" * 4095, d / "long")),
        "long_back": outcome(lambda: len(os.readlink(d / "long"))),
        "too_long": outcome(lambda: os.symlink("t" * 4096, d / "toolong")),
        "odd_target": outcome(lambda: os.symlink("a b/../\tc", d / "odd")),
        "odd_back": outcome(lambda: os.readlink(d / "odd")),
        "missing_dir": outcome(lambda: os.symlink("x", d / "nodir" / "l")),
    }


# --- special files ------------------------------------------------------------------------------


@case
def mknod_fifo(d: Path) -> JSON:
    p = d / "fifo"
    out: dict[str, JSON] = {}
    out["mkfifo"] = outcome(lambda: os.mkfifo(p, 0o640))
    out["info"] = outcome(lambda: info(p))
    out["again"] = outcome(lambda: os.mkfifo(p))
    out["writer_alone"] = open_close(p, os.O_WRONLY | os.O_NONBLOCK)
    with opened(p, os.O_RDONLY | os.O_NONBLOCK) as r, opened(p, os.O_WRONLY | os.O_NONBLOCK) as w:
        out["write"] = os.write(w, b"through the pipe")
        out["read"] = os.read(r, 100).decode()
    out["mknod"] = outcome(lambda: os.mknod(d / "fifo2", stat.S_IFIFO | 0o600))
    out["fifo2"] = outcome(lambda: info(d / "fifo2"))
    return out


@case
def mknod_socket_and_regular(d: Path) -> JSON:
    out: dict[str, JSON] = {}
    out["sock"] = outcome(lambda: os.mknod(d / "sock", stat.S_IFSOCK | 0o600))
    out["sock_info"] = outcome(lambda: info(d / "sock"))
    out["reg"] = outcome(lambda: os.mknod(d / "reg", stat.S_IFREG | 0o640))
    out["reg_info"] = outcome(lambda: info(d / "reg"))
    out["default"] = outcome(lambda: os.mknod(d / "plain"))
    out["default_info"] = outcome(lambda: info(d / "plain"))
    out["exists"] = outcome(lambda: os.mknod(d / "reg", stat.S_IFIFO | 0o600))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        out["connect_unbound"] = outcome(lambda: s.connect(str(d / "sock")))
    return out


@case
def unix_socket_bind_and_connect(d: Path) -> JSON:
    path = str(d / "srv")
    out: dict[str, JSON] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        out["bind"] = outcome(lambda: server.bind(path))
        server.listen(1)
        out["info"] = outcome(lambda: info(path))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            out["connect"] = outcome(lambda: client.connect(path))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                out["received"] = conn.recv(10).decode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
        out["connect_closed"] = outcome(lambda: late.connect(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as again:
        out["bind_again"] = outcome(lambda: again.bind(path))
    return out


# --- statfs, access -------------------------------------------------------------------------------


@case
def statvfs_basics(d: Path) -> JSON:
    write_file(d / "f", b"")
    st = os.statvfs(d)
    via_file = os.statvfs(d / "f")
    with opened(d / "f", os.O_RDONLY) as fd:
        via_fd = os.fstatvfs(fd)
    return {
        "namemax": st.f_namemax,
        "positive": [st.f_bsize > 0, st.f_frsize > 0, st.f_blocks > 0, st.f_files > 0],
        "free_le_total": [st.f_bfree <= st.f_blocks, st.f_bavail <= st.f_bfree],
        "same_via_file": via_file.f_namemax == st.f_namemax and via_file.f_bsize == st.f_bsize,
        "same_via_fd": via_fd.f_namemax == st.f_namemax,
        "missing": outcome(lambda: os.statvfs(d / "missing").f_namemax),
    }


@case
def access_modes(d: Path) -> JSON:
    targets = {"rw": 0o644, "none": 0o000, "xowner": 0o100, "xother": 0o001, "all": 0o777}
    for name, mode in targets.items():
        write_file(d / name, b"", 0o644)
        os.chmod(d / name, mode)
    (d / "dir").mkdir()
    os.chmod(d / "dir", 0o000)
    os.symlink("missing", d / "dangling")
    out: dict[str, JSON] = {}
    for name in [*targets, "dir", "dangling", "missing"]:
        out[name] = [
            os.access(d / name, os.F_OK),
            os.access(d / name, os.R_OK),
            os.access(d / name, os.W_OK),
            os.access(d / name, os.X_OK),
            os.access(d / name, os.R_OK | os.W_OK | os.X_OK),
        ]
    out["nofollow"] = os.access(d / "dangling", os.F_OK, follow_symlinks=False)
    return out


# --- xattrs ---------------------------------------------------------------------------------------


def _xattr_session(path: Path) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    out["list_empty"] = outcome(lambda: sorted(os.listxattr(path)))
    out["get_missing"] = outcome(lambda: os.getxattr(path, "user.a").decode())
    out["set"] = outcome(lambda: os.setxattr(path, "user.a", b"one"))
    out["get"] = outcome(lambda: os.getxattr(path, "user.a").decode())
    out["create_existing"] = outcome(
        lambda: os.setxattr(path, "user.a", b"x", os.XATTR_CREATE))
    out["replace_missing"] = outcome(
        lambda: os.setxattr(path, "user.b", b"x", os.XATTR_REPLACE))
    out["create_new"] = outcome(lambda: os.setxattr(path, "user.b", b"two", os.XATTR_CREATE))
    out["replace"] = outcome(lambda: os.setxattr(path, "user.a", b"uno", os.XATTR_REPLACE))
    out["empty_value"] = outcome(lambda: os.setxattr(path, "user.empty", b""))
    out["get_empty"] = outcome(lambda: os.getxattr(path, "user.empty").decode())
    big = bytes(range(256)) * 16
    out["big"] = outcome(lambda: os.setxattr(path, "user.big", big))
    out["get_big"] = outcome(lambda: os.getxattr(path, "user.big") == big)
    out["list"] = outcome(lambda: sorted(os.listxattr(path)))
    out["values"] = outcome(lambda: [os.getxattr(path, n).decode("latin-1")[:8]
                                     for n in sorted(os.listxattr(path))])
    out["remove"] = outcome(lambda: os.removexattr(path, "user.a"))
    out["remove_missing"] = outcome(lambda: os.removexattr(path, "user.a"))
    out["get_removed"] = outcome(lambda: os.getxattr(path, "user.a").decode())
    out["bad_namespace"] = outcome(lambda: os.setxattr(path, "nonsense.a", b"x"))
    out["name_too_long"] = outcome(lambda: os.setxattr(path, "user." + "n" * 300, b"x"))
    out["value_too_big"] = outcome(lambda: os.setxattr(path, "user.huge", bytes(70_000)))
    out["value_beyond_block"] = outcome(lambda: os.setxattr(path, "user.large", bytes(9000)))
    out["list_after"] = outcome(lambda: sorted(os.listxattr(path)))
    return out


@case
def xattr_user_on_file(d: Path) -> JSON:
    write_file(d / "f", b"")
    out = _xattr_session(d / "f")
    with opened(d / "f", os.O_RDONLY) as fd:
        out["fset"] = outcome(lambda: os.setxattr(fd, "user.fd", b"via fd"))
        out["fget"] = outcome(lambda: os.getxattr(fd, "user.fd").decode())
    return out


@case
def xattr_user_on_directory(d: Path) -> JSON:
    (d / "sub").mkdir()
    return _xattr_session(d / "sub")


@case
def xattr_symlinks_and_missing(d: Path) -> JSON:
    write_file(d / "t", b"")
    os.symlink("t", d / "l")
    return {
        "set_on_link": outcome(
            lambda: os.setxattr(d / "l", "user.x", b"1", follow_symlinks=False)),
        "get_on_link": outcome(
            lambda: os.getxattr(d / "l", "user.x", follow_symlinks=False).decode()),
        "list_on_link": outcome(lambda: os.listxattr(d / "l", follow_symlinks=False)),
        "set_through": outcome(lambda: os.setxattr(d / "l", "user.y", b"2")),
        "target_has": outcome(lambda: os.getxattr(d / "t", "user.y").decode()),
        "missing": outcome(lambda: os.setxattr(d / "missing", "user.x", b"1")),
        "get_missing_file": outcome(lambda: os.getxattr(d / "missing", "user.x").decode()),
    }


@case
def xattr_trusted_as_root(d: Path) -> JSON:
    write_file(d / "f", b"")
    f = d / "f"
    return {
        "set": outcome(lambda: os.setxattr(f, "trusted.fm", b"root only")),
        "get": outcome(lambda: os.getxattr(f, "trusted.fm").decode()),
        "listed": outcome(lambda: "trusted.fm" in os.listxattr(f)),
        "remove": outcome(lambda: os.removexattr(f, "trusted.fm")),
    }


# --- SPEC rules: where the view differs from a plain directory on purpose -------------------------


@case
def device_nodes_as_natively(d: Path) -> JSON:
    """SPEC 3: device nodes and whiteouts follow native rules (deny_special_files is off)."""
    write_file(d / "w", b"")
    out: dict[str, JSON] = {
        "chr": outcome(lambda: os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))),
        "blk": outcome(lambda: os.mknod(d / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))),
    }
    # RENAME_WHITEOUT leaves a 0:0 character device behind on a native ext4 (kernel-facts §9)
    renameat2(d / "w", d / "w2", syscalls.RENAME_WHITEOUT)
    out["whiteout_made_device"] = any(
        stat.S_ISCHR(e.stat(follow_symlinks=False).st_mode) for e in os.scandir(d))
    os.unlink(d / ("w2" if (d / "w2").exists() else "w"))
    out["names"] = listing(d)
    return out


@case
def setid_bits_as_natively(d: Path) -> JSON:
    """SPEC 3: owners set set-ID bits as chmod would natively (deny_special_files is off)."""
    f = d / "f"
    write_file(f, b"#!/bin/sh\n", 0o755)
    os.chmod(f, 0o755)
    out: dict[str, JSON] = {
        "chmod_4755": outcome(lambda: os.chmod(f, 0o4755)),
        "chmod_2755": outcome(lambda: os.chmod(f, 0o2755)),
        "chmod_6755": outcome(lambda: os.chmod(f, 0o6755)),
    }
    with opened(f, os.O_RDONLY) as fd:
        out["fchmod_4755"] = outcome(lambda: os.fchmod(fd, 0o4755))
    out["after"] = oct(stat.S_IMODE(os.stat(f).st_mode))
    out["create_setuid"] = open_close(d / "suid", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o4755)
    out["mknod_setgid"] = outcome(lambda: os.mknod(d / "sgid", stat.S_IFREG | 0o2755))
    out["names"] = listing(d)
    (d / "sub").mkdir(0o755)
    out["dir_setgid"] = outcome(lambda: os.chmod(d / "sub", 0o2755))
    out["dir_after"] = oct(stat.S_IMODE(os.stat(d / "sub").st_mode))
    os.rmdir(d / "sub")
    os.unlink(f)
    return out


@rule({
    "mkdir": "EACCES", "create": "EACCES", "symlink": "EACCES", "mkfifo": "EACCES",
    "link": "EACCES", "rename_subtree": "EACCES", "rename_into_root": "EACCES",
    "rename_out_of_root": "EACCES", "rmdir_subtree": "EACCES", "rmdir_control": "EACCES",
    "exchange": "EACCES", "root": {"kind": "dir", "perm": "0o705", "uid": 0, "gid": 0},
    "unchanged": True,
})
def view_root_is_immutable(d: Path) -> JSON:
    root = d.parent
    write_file(d / "f", b"")
    before = listing(root)
    st = os.stat(root)
    out: dict[str, JSON] = {
        "mkdir": outcome(lambda: os.mkdir(root / "newdir")),
        "create": open_close(root / "newfile", os.O_CREAT | os.O_WRONLY),
        "symlink": outcome(lambda: os.symlink(d.name, root / "newlink")),
        "mkfifo": outcome(lambda: os.mkfifo(root / "newfifo")),
        "link": outcome(lambda: os.link(d / "f", root / "newhard")),
        "rename_subtree": outcome(lambda: os.rename(d, root / "renamed")),
        "rename_into_root": outcome(lambda: os.rename(d / "f", root / "moved")),
        "rename_out_of_root": outcome(lambda: os.rename(root / ".fusemount", d / "ctl")),
        "rmdir_subtree": outcome(lambda: os.rmdir(d)),
        "rmdir_control": outcome(lambda: os.rmdir(root / ".fusemount")),
        "exchange": renameat2(root / ".fusemount", d, syscalls.RENAME_EXCHANGE),
        "root": {"kind": kind(st.st_mode), "perm": oct(stat.S_IMODE(st.st_mode)),
                 "uid": st.st_uid, "gid": st.st_gid},
    }
    out["unchanged"] = listing(root) == before and (d / "f").exists()
    os.unlink(d / "f")
    return out


_CONTROL_FILES = ["ctl", "metrics", "mounts", "mounts.json", "version"]


@rule({
    "folder": {"kind": "dir", "perm": "0o755", "uid": 0, "gid": 0},
    "names": _CONTROL_FILES,
    "root_lists_it": True,
    "files": {
        "ctl": ["reg", "0o666", 0], "mounts": ["reg", "0o444", 0],
        "mounts.json": ["reg", "0o444", 0], "version": ["reg", "0o444", 0],
        "metrics": ["reg", 0],
    },
    "version_format": True,
    "mounts_names_subtree": True,
    "create_inside": "EACCES", "mkdir_inside": "EACCES", "unlink_ctl": "EACCES",
    "rename_ctl": "EACCES", "chmod_folder_refused": True, "chmod_ctl_refused": True,
    "chmod_version_refused": True, "modes_unchanged": True,
})
def control_folder_attributes(d: Path) -> JSON:
    folder = d.parent / ".fusemount"
    st = os.stat(folder)
    files: dict[str, JSON] = {}
    for name in _CONTROL_FILES:
        fst = os.stat(folder / name)
        perm = oct(stat.S_IMODE(fst.st_mode))
        # SPEC 4 gives `metrics` no mode ("admins only"): only its kind and size are fixed
        files[name] = ([kind(fst.st_mode), fst.st_size] if name == "metrics"
                       else [kind(fst.st_mode), perm, fst.st_size])
    version = (folder / "version").read_text()
    parts = version.split()
    mounts = (folder / "mounts").read_text().splitlines()
    refused = ("EPERM", "EACCES")
    out: dict[str, JSON] = {
        "folder": {"kind": kind(st.st_mode), "perm": oct(stat.S_IMODE(st.st_mode)),
                   "uid": st.st_uid, "gid": st.st_gid},
        "names": listing(folder),
        "root_lists_it": ".fusemount" in os.listdir(d.parent),
        "files": files,
        "version_format": len(parts) == 2 and parts[0] == "fusemount"
        and len(parts[1].split(".")) == 3 and all(p.isdigit() for p in parts[1].split(".")),
        "mounts_names_subtree": any(line.split()[:1] == [d.name] for line in mounts),
        "create_inside": open_close(folder / "new", os.O_CREAT | os.O_WRONLY),
        "mkdir_inside": outcome(lambda: os.mkdir(folder / "newdir")),
        "unlink_ctl": outcome(lambda: os.unlink(folder / "ctl")),
        "rename_ctl": outcome(lambda: os.rename(folder / "ctl", folder / "ctl2")),
        "chmod_folder_refused": outcome(lambda: os.chmod(folder, 0o700)) in refused,
        "chmod_ctl_refused": outcome(lambda: os.chmod(folder / "ctl", 0o600)) in refused,
        "chmod_version_refused": outcome(lambda: os.chmod(folder / "version", 0o644)) in refused,
    }
    out["modes_unchanged"] = (
        stat.S_IMODE(os.stat(folder).st_mode) == 0o755
        and stat.S_IMODE(os.stat(folder / "ctl").st_mode) == 0o666
        and stat.S_IMODE(os.stat(folder / "version").st_mode) == 0o444
    )
    return out
