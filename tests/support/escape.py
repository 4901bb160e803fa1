"""What the attack tests share: a decoy full of SECRETs, tree snapshots, mounts, raw syscalls.

Job: build the two trees every attack needs (an original source and a decoy that mirrors its
names but holds only SECRET), take native snapshots to compare what the view shows against,
and do the few things the stdlib cannot (renameat2 flags, file handles). Never: read or write
anything through a view here (the tests do that, so a hang shows in the test that caused it),
or leave a mount behind when a `with mounted(...)` block ends, whatever happened inside it.
Serves the test side of SPEC 1 (pinned sources) and SPEC 3 (what the view may do).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.daemon import is_mounted, lazy_unmount

SECRET = b"SECRET: decoy content that must never be seen through the view\n"
SECRET_NAME = "SECRET"
# Names every test tree has, so a view that followed the decoy would find them there too.
LAYOUT_FILES = ("hello.txt", "sub/file", "sub/deep/file", "d/file")
LAYOUT_DIRS = ("sub", "sub/deep", "d")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
_AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


def original(relpath: str) -> bytes:
    """The content of relpath in an original tree: unique per file, never SECRET."""
    return f"original content of {relpath}\n".encode()


def build_original(root: Path) -> None:
    """Fill root with LAYOUT_DIRS and LAYOUT_FILES (mode 0644, dirs 0755)."""
    for d in LAYOUT_DIRS:
        (root / d).mkdir(mode=0o755, exist_ok=True)
    for f in LAYOUT_FILES:
        (root / f).write_bytes(original(f))


def build_decoy(root: Path) -> None:
    """Fill root with the same names as an original tree, every file SECRET, plus a `SECRET`
    file in every directory, so any listing or read through the decoy shows the word."""
    for d in ("", *LAYOUT_DIRS):
        (root / d).mkdir(mode=0o755, exist_ok=True)
        (root / d / SECRET_NAME).write_bytes(SECRET)
    for f in LAYOUT_FILES:
        (root / f).write_bytes(SECRET)


Snapshot = dict[str, bytes | str]


def snapshot(root: Path | str | int) -> Snapshot:
    """Every name under root (a path or a directory descriptor), never following a symlink:
    relpath -> file content, "<dir>", "-> target" for a symlink, or "<type 0o...>"."""
    out: Snapshot = {}

    def walk(dir_fd: int, prefix: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            rel = prefix + name
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = "<dir>"
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    walk(sub, rel + "/")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    out[rel] = _read_all(fd)
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(name, dir_fd=dir_fd)
            else:
                out[rel] = f"<type {stat.S_IFMT(st.st_mode):#o}>"

    if isinstance(root, int):
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
    else:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(fd, "")
    finally:
        os.close(fd)
    return out


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def assert_no_secret(snap: Snapshot, where: str) -> None:
    """Fail if any name or file content in snap comes from a decoy."""
    leaks = [rel for rel, value in snap.items()
             if os.path.basename(rel) == SECRET_NAME or (isinstance(value, bytes)
                                                           and b"SECRET" in value)]
    assert not leaks, f"decoy visible through {where}: {leaks}"


def errno_of(fn: Callable[[], object]) -> int:
    """0 if fn() succeeds, else the errno of the OSError it raised."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def name_of(code: int) -> str:
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))


def outcomes(attempts: Mapping[str, Callable[[], object]]) -> dict[str, str]:
    """Run each attempt in order; name -> "ok" or the errno name of the OSError it raised."""
    return {what: name_of(errno_of(fn)) for what, fn in attempts.items()}


def renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    """renameat2(2) with flags; raises OSError."""
    if _libc.renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), f"{old} -> {new}")


def rename_paths(old: Path, new: Path, flags: int) -> None:
    renameat2(_AT_FDCWD, str(old), _AT_FDCWD, str(new), flags)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


def name_to_handle(path: Path) -> _FileHandle:
    """name_to_handle_at(AT_FDCWD, path); raises OSError."""
    handle = _FileHandle()
    handle.handle_bytes = 128
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(_AT_FDCWD, os.fsencode(path), ctypes.byref(handle),
                               ctypes.byref(mount_id), 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))
    return handle


def open_by_handle(mount_fd: int, handle: _FileHandle, flags: int) -> int:
    """open_by_handle_at(mount_fd, handle, flags); raises OSError."""
    fd = int(_libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), "open_by_handle_at")
    return fd


def run(argv: list[str]) -> None:
    """Run a root command; fail the test with its stderr if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{argv} failed: {result.stderr.strip()}"


def unmount_all_at(target: Path) -> None:
    """Remove every mount stacked at target (umount, then umount -l); never raises."""
    for _ in range(8):
        if not is_mounted(target):
            return
        done = subprocess.run(["umount", str(target)], capture_output=True, timeout=30,
                              check=False)
        if done.returncode != 0 and not lazy_unmount(target):
            return


@contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[None]:
    """Run `mount ARGV... TARGET` for the block; afterwards nothing is mounted at target."""
    try:
        run(["mount", *argv, str(target)])
        yield
    finally:
        unmount_all_at(target)


@dataclass(frozen=True, slots=True)
class Trees:
    """An original source tree and a decoy beside it, both under the session's test root."""

    source: Path
    decoy: Path

    def decoy_unchanged(self) -> None:
        """The decoy holds exactly what build_decoy() put there: nothing was written to it."""
        assert snapshot(self.decoy) == decoy_snapshot(), "the decoy was changed through the view"


def put_decoy_in_place(trees: Trees, how: Callable[[Path, Path], None]) -> Path:
    """The attack on a source path: move the source aside, put the decoy at its path with
    how(decoy, path) (os.rename or os.symlink) and check it took effect. Returns where the
    original tree went."""
    moved = trees.source.with_name(trees.source.name + ".moved")
    os.rename(trees.source, moved)
    how(trees.decoy, trees.source)
    assert SECRET_NAME in os.listdir(trees.source), "the attack did not take effect"
    return moved


def decoy_snapshot() -> Snapshot:
    """What snapshot() of a fresh build_decoy() tree returns."""
    out: Snapshot = {SECRET_NAME: SECRET}
    for d in LAYOUT_DIRS:
        out[d] = "<dir>"
        out[f"{d}/{SECRET_NAME}"] = SECRET
    for f in LAYOUT_FILES:
        out[f] = SECRET
    return out
