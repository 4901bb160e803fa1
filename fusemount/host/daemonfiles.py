"""The daemon's own files: state lock, pidfile, audit log, their directories (SPEC 8).

How this works: directories are made one level at a time with an explicit mode without
group or other write (the daemon runs with umask 0, so no mode is left to the umask), and
each level made is checked to be the directory just created. Files are opened with
O_NOFOLLOW (a symlink in the last component is refused, never followed) and checked on the
descriptor: a regular file, owned by root (or the daemon's own uid), and writable by
nobody else; anything else is refused, not trusted or "repaired". The pidfile and the
state lock carry a POSIX write lock for the daemon's life, so the kernel itself says which
process serves a view or uses a state file (`lock_holder`), whatever a file's text claims.

Never: follow a symlink in a last component, chmod or chown a file that exists (the
operator's choice stays, or the file is refused), or unlink a lock file (a second daemon
could then lock a fresh inode while the first still runs).
Known gap: symlinks in directory components above the last one are followed (/var/run is
one on most systems); those directories belong to root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass

DEFAULT_STATE_DIR = "/var/lib/fusemount"
DEFAULT_LOG_DIR = "/var/log/fusemount"
RUN_DIR = "/run/fusemount"

# struct flock on Linux (x86_64 and aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid, padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


class UnsafeFile(OSError):
    """A file or directory of the daemon's that may not be trusted; str() is one line."""


def escape_path(path: str) -> str:
    """`systemd-escape --path PATH`: the name systemd gives a unit for PATH (`/` -> `-`).

    Also the key of the per-view default files, so /mnt/view's state file is
    /var/lib/fusemount/mnt-view.json and its unit fusemount@mnt-view.service.
    """
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        return "-"
    out: list[str] = []
    for index, char in enumerate("/".join(parts)):
        if char == "/":
            out.append("-")
        elif (char.isascii() and (char.isalnum() or char in ":_.")) and not (
                index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


def default_state_path(view: str) -> str:
    """The state file of a view when --state is not given: one per view (SPEC 8)."""
    return os.path.join(DEFAULT_STATE_DIR, f"{escape_path(view)}.json")


def default_audit_path(view: str) -> str:
    """The audit log of a detached view whose config names none (issue 15)."""
    return os.path.join(DEFAULT_LOG_DIR, f"{escape_path(view)}.audit.jsonl")


def default_log_path(view: str) -> str:
    """The daemon log of a detached view when syslog cannot be reached."""
    return os.path.join(DEFAULT_LOG_DIR, f"{escape_path(view)}.log")


def pidfile_path(view: str) -> str:
    return os.path.join(RUN_DIR, f"{escape_path(view)}.pid")


def make_dirs(path: str, mode: int) -> None:
    """Create directory path and its missing parents with mode (group/other write removed).

    Raises UnsafeFile if path ends up as something other than a directory, or as a
    directory others may write without the sticky bit, or owned by another user.
    """
    mode &= ~0o022
    path = os.path.abspath(path)
    missing: list[str] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass  # made by someone else meanwhile: judged below like any existing one
        else:
            os.chmod(directory, mode, follow_symlinks=False)  # exactly mode, whatever umask
    check_dir(path)


def check_dir(path: str) -> None:
    """Raise UnsafeFile unless path is a directory only root or we may change (SPEC 8)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)  # a symlinked directory (/var/run) is judged by its target
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFile(errno.ENOTDIR, f"{path} is not a directory")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeFile(errno.EPERM, f"directory {path} belongs to uid {st.st_uid}, "
                         "not root: refusing to keep the daemon's files in it")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafeFile(errno.EPERM, f"directory {path} is writable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}): refusing to use it")


def open_own(path: str, flags: int, mode: int = 0o600) -> int:
    """Open (creating with mode if flags say so) one of the daemon's own files, safely.

    Raises UnsafeFile for a symlink in the last component, a file that is not regular,
    or one that someone other than root may write.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, mode & ~0o022)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, f"{path} is a symlink: refusing to follow it") from None
        raise
    try:
        check_own_fd(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_own_fd(fd: int, path: str) -> None:
    """Raise UnsafeFile unless fd is a regular file that only root (or we) may write."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(errno.EINVAL, f"{path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeFile(errno.EPERM, f"{path} belongs to uid {st.st_uid}, not root: "
                         "refusing to trust it")
    if st.st_mode & 0o022:
        raise UnsafeFile(errno.EPERM, f"{path} is writable by others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}): refusing to trust it")


def try_lock(fd: int) -> bool:
    """Take a POSIX write lock on the whole of fd's file; False if another process holds one.

    The lock lives until the process exits or closes any descriptor of that file.
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def lock_holder(fd: int) -> int | None:
    """The pid of the process holding a write lock on fd's file, or None if none does."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    l_type, _, _, _, l_pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return None if l_type == fcntl.F_UNLCK else int(l_pid)


def write_whole(fd: int, text: str) -> None:
    """Replace fd's content with text (the file stays the same inode, lock included)."""
    os.ftruncate(fd, 0)
    data = memoryview(text.encode("utf-8", "surrogateescape"))
    offset = 0
    while offset < len(data):
        offset += os.pwrite(fd, data[offset:], offset)


def read_small(fd: int, limit: int = 4096) -> str:
    return os.pread(fd, limit, 0).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock file: the kernel's pid and what the file says about the view."""

    pid: int
    text: str


def holder_of(path: str) -> Holder | None:
    """Who holds the lock on path (a pidfile or state lock), or None if nobody does.

    Raises UnsafeFile for a file that may not be trusted, OSError if it cannot be opened.
    """
    fd = open_own(path, os.O_RDONLY)
    try:
        pid = lock_holder(fd)
        return None if pid is None else Holder(pid, read_small(fd).strip())
    finally:
        os.close(fd)
