"""Helpers of the ranges suite: what a caller sees of a file (content, size, blocks, the
SEEK_DATA/SEEK_HOLE map), a sparse file to start from, and native-vs-view pairs on the host
filesystems the suite mounts.

Job: summarise a file through plain system calls so that a native summary and one taken
through the view compare with ==. Never: write to the file being summarised.
Serves the test side of SPEC 3 and issue 14.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from tests.support import pairs
from tests.support.daemon import ViewHandle
from tests.support.dirs import fresh_dir

KiB = 1024
FS_BYTES = 64 << 20  # the size of each host filesystem the suite mounts

Summary = dict[str, object]


def seek_map(fd: int) -> list[tuple[str, int, int]]:
    """The file as SEEK_DATA/SEEK_HOLE show it: (kind, start, end) runs up to its size."""
    size = os.fstat(fd).st_size
    runs: list[tuple[str, int, int]] = []
    offset = 0
    while offset < size:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            runs.append(("hole", offset, size))
            break
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        if data > offset:
            runs.append(("hole", offset, data))
        runs.append(("data", data, hole))
        offset = hole
    return runs


def past_end(fd: int) -> list[str]:
    """What SEEK_DATA and SEEK_HOLE answer at the size and beyond (ENXIO natively)."""
    size = os.fstat(fd).st_size
    out = []
    for whence in (os.SEEK_DATA, os.SEEK_HOLE):
        for offset in (size, size + 4096):
            try:
                out.append(str(os.lseek(fd, offset, whence)))
            except OSError as exc:
                out.append(errno.errorcode[exc.errno or 0])
    return out


def describe(path: Path) -> Summary:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        digest = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        return {"size": st.st_size, "blocks": st.st_blocks, "sha256": digest.hexdigest(),
                "map": seek_map(fd), "past_end": past_end(fd)}
    finally:
        os.close(fd)


def make_sparse(path: Path) -> None:
    """256 KiB data, 256 KiB hole, 256 KiB data, then a hole to 1 MiB."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.pwrite(fd, b"\xab" * (256 * KiB), 0)
        os.pwrite(fd, bytes(range(256)) * 1024, 512 * KiB)
        os.ftruncate(fd, 1024 * KiB)
        os.fsync(fd)
    finally:
        os.close(fd)


def attach_pair(view: ViewHandle, host: tuple[str, Path]) -> pairs.Pair:
    """A plain directory and a fresh subtree side by side in a new directory on host
    ((fstype, mount point), the host_fs fixture)."""
    return pairs.attach_pair(view, fresh_dir(host[1], "pair-"), "r")
