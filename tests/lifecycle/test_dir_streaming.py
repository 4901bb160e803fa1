"""Open directories stream from their descriptor (SPEC 6, issue 12 item 4).

A listing through the view is the source's own getdents64 order with the filesystem's own
offsets: the same entries as natively, none repeated or lost, seekdir/telldir land where
they should, and an open directory costs the daemon a few KiB whatever its size.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory

_libc = ctypes.CDLL(None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.closedir.argtypes = [ctypes.c_void_p]
_D_NAME_OFFSET = 19  # struct dirent: d_ino 8, d_off 8, d_reclen 2, d_type 1


def _native_order(directory: Path) -> list[str]:
    """Names as the filesystem lists them, `.` and `..` included, unsorted (ls -f)."""
    done = subprocess.run(["ls", "-f", "-a", str(directory)], capture_output=True, text=True,
                          check=True, timeout=60)
    return done.stdout.splitlines()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fill(directory: Path, count: int, name_len: int = 12) -> None:
    for n in range(count):
        os.mknod(directory / f"{n:0{name_len}d}")


@pytest.mark.timeout(120)
def test_listing_matches_the_source_entry_for_entry(view_factory: ViewFactory,
                                                    source: Path) -> None:
    (source / "big").mkdir()
    _fill(source / "big", 6000)
    (source / "long").mkdir()
    for n in range(300):  # names near NAME_MAX: few entries per getdents64 buffer
        os.mknod(source / "long" / (f"{n:03d}" + "x" * 250))
    (source / "empty").mkdir()
    view = view_factory()
    view.ok(f"attach s {source}")
    for rel in ("", "big", "long", "empty"):
        native = _native_order(source / rel)
        through = _native_order(view.path / "s" / rel)
        assert len(through) == len(set(through)), f"{rel}: an entry repeats"
        assert through == native, f"{rel}: the view lists otherwise than the source"


@pytest.mark.timeout(120)
def test_seekdir_returns_to_the_entry_telldir_named(view_factory: ViewFactory,
                                                    source: Path) -> None:
    _fill(source, 3000)
    view = view_factory()
    view.ok(f"attach s {source}")
    dirp = _libc.opendir(os.fsencode(view.path / "s"))
    assert dirp, os.strerror(ctypes.get_errno())
    try:
        marks: list[tuple[int, str]] = []
        names: list[str] = []
        while True:
            where = _libc.telldir(dirp)
            entry = _libc.readdir(dirp)
            if not entry:
                break
            name = ctypes.string_at(entry + _D_NAME_OFFSET).decode()
            names.append(name)
            if len(names) % 97 == 0:
                marks.append((where, name))
        assert sorted(names) == sorted([".", "..", *os.listdir(source)])
        # Back to every mark, in an order that forces the daemon to seek each time.
        for where, name in reversed(marks):
            _libc.seekdir(dirp, where)
            entry = _libc.readdir(dirp)
            assert entry and ctypes.string_at(entry + _D_NAME_OFFSET).decode() == name
        _libc.seekdir(dirp, 0)  # rewinddir
        entry = _libc.readdir(dirp)
        assert entry and ctypes.string_at(entry + _D_NAME_OFFSET).decode() == names[0]
    finally:
        _libc.closedir(dirp)


@pytest.mark.timeout(240)
def test_many_opens_of_a_huge_directory_cost_bounded_memory_issue_12(
    view_factory: ViewFactory, source: Path
) -> None:
    _fill(source, 50_000, name_len=40)
    view = view_factory()
    view.ok(f"attach s {source}")
    pid = view.pid
    os.listdir(view.path / "s")  # the entries the kernel will see are in the table once
    before = _rss_kib(pid)
    opened = []
    try:
        for _ in range(250):
            it = os.scandir(view.path / "s")
            opened.append(it)
            next(it)
        grown_mib = (_rss_kib(pid) - before) / 1024
    finally:
        for it in opened:
            it.close()
    # Holding every listing costs about 4 MiB per open here (1 GiB in all); a few KiB
    # of getdents64 buffer each is what is allowed.
    print(f"daemon RSS grew {grown_mib:.1f} MiB for 250 open 50,000-entry directories")
    assert grown_mib < 50


def _listing(directory: Path) -> dict[str, tuple[int, bool, bool, bool]]:
    """name -> (d_ino, is a directory, a symlink, a regular file) as getdents64 says."""
    with os.scandir(directory) as entries:
        return {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink(),
                         e.is_file(follow_symlinks=False)) for e in entries}


@pytest.mark.timeout(60)
def test_listed_numbers_and_types_are_what_stat_shows_cold_and_warm(
    view_factory: ViewFactory, source: Path
) -> None:
    """The first listing carries attributes; the next lists by name alone what the kernel
    still holds (issue 13 item 5). Both show each entry's st_ino through the view and the
    file type the source's own listing shows."""
    top = source / "d"
    (top / "sub").mkdir(parents=True)
    for n in range(50):
        (top / f"f{n}").write_text(str(n))
    os.symlink("f0", top / "link")
    os.mkfifo(top / "fifo")
    os.link(top / "f1", top / "hard")
    view = view_factory()
    view.ok(f"attach a {source}")
    through = view.path / "a" / "d"
    native = {name: kind[1:] for name, kind in _listing(top).items()}
    for _ in range(3):  # cold, then warm twice
        listed = _listing(through)
        assert {name: kind[1:] for name, kind in listed.items()} == native
        assert {name: kind[0] for name, kind in listed.items()} == {
            name: os.lstat(through / name).st_ino for name in native}
    assert listed["hard"][0] == listed["f1"][0]
