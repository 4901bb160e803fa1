"""getdents64 and the listing state behind readdir (issue 12 item 4): every entry once,
`.` and `..` included, and d_off cookies that resume exactly where they say."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fusemount.host import backing, syscalls


def _entries(fd: int, offset: int | None, size: int) -> list[tuple[bytes, int]]:
    records = backing.read_dir(fd, offset, size)
    out, pos = [], 0
    while pos < len(records):
        name, next_off, reclen, _, _ = backing.dir_entry(records, pos)
        out.append((name, next_off))
        pos += reclen
    return out


def test_getdents64_lists_every_entry_once_and_resumes_at_d_off(tmp_path: Path) -> None:
    names = {f"n{i}".encode() for i in range(500)} | {b"x" * 255, "é".encode()}
    for name in names:
        os.mknod(os.path.join(os.fsencode(tmp_path), name))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        listed: list[tuple[bytes, int]] = []
        offset: int | None = 0
        while chunk := _entries(fd, offset, 1024):
            listed += chunk
            offset = None  # carry on from where the descriptor stands
        assert sorted(n for n, _ in listed) == sorted([b".", b"..", *names])
        # Resume from any entry's cookie: the rest follows, in the same order.
        middle = len(listed) // 2
        rest: list[tuple[bytes, int]] = []
        offset = listed[middle][1]
        while chunk := _entries(fd, offset, 4096):
            rest += chunk
            offset = None
        assert rest == listed[middle + 1:]
        # A record that does not fit the buffer is an error, never a silent truncation.
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(OSError) as info:
            syscalls.getdents64(fd, 8)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
