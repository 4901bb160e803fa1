"""fallocate in every mode and SEEK_DATA/SEEK_HOLE maps, natively and in the view (issue 14).

Each case builds the same sparse file in a plain directory and in a subtree on the same
filesystem (ext4 on a loop device, tmpfs), applies one fallocate mode, and compares what a
caller sees: the errno, size, allocated blocks, content and the data/hole map that
SEEK_DATA/SEEK_HOLE walk. Collapse and insert range are the exception: fuse itself refuses
them (EOPNOTSUPP) before the daemon is asked, so the view reports what a filesystem without
them would, and leaves the file untouched.
Serves SPEC 3 (fallocate where the source supports it) and issue 14 items 2 and 3.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fusemount.host import syscalls
from tests.support.daemon import ViewHandle
from tests.support.pairs import Pair
from tests.support.ranges import KiB, Summary, describe, make_sparse, past_end, seek_map
from tests.support.users import Users, py_as

pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(60)]

KEEP_SIZE, PUNCH_HOLE, COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE = 0x01, 0x02, 0x08, 0x10, 0x20
MODES = {
    "allocate": 0,
    "keep_size": KEEP_SIZE,
    "punch_hole": PUNCH_HOLE | KEEP_SIZE,
    "zero_range": ZERO_RANGE,
    "zero_range_keep_size": ZERO_RANGE | KEEP_SIZE,
    "collapse_range": COLLAPSE_RANGE,
    "insert_range": INSERT_RANGE,
}
KERNEL_REFUSES = {"collapse_range", "insert_range"}  # fuse answers EOPNOTSUPP itself


def apply(directory: Path, mode: int, offset: int, length: int) -> Summary:
    path = directory / "f"
    make_sparse(path)
    fd = os.open(path, os.O_RDWR)
    try:
        syscalls.fallocate(fd, mode, offset, length)
        os.fsync(fd)
        result = "ok"
    except OSError as exc:
        result = errno.errorcode[exc.errno or 0]
    finally:
        os.close(fd)
    return {"result": result, **describe(path)}


@pytest.mark.parametrize("mode_name", sorted(MODES))
@pytest.mark.parametrize(("offset", "length"), [(128 * KiB, 512 * KiB),
                                                (768 * KiB, 512 * KiB)],
                         ids=["inside", "past_eof"])
def test_fallocate_mode_matches_native_issue_14(pair: Pair, mode_name: str, offset: int,
                                                 length: int) -> None:
    mode = MODES[mode_name]
    native = apply(pair.native, mode, offset, length)
    viewed = apply(pair.view_dir, mode, offset, length)
    backing = {"result": viewed["result"], **describe(pair.backing / "f")}
    assert backing == viewed, "the view shows something else than the source holds"
    if mode_name in KERNEL_REFUSES:
        assert viewed["result"] == errno.errorcode[errno.EOPNOTSUPP]
        make_sparse(pair.native / "plain")
        assert {k: v for k, v in viewed.items() if k != "result"} == \
            describe(pair.native / "plain"), "a refused mode changed the file"
        return
    assert viewed == native


@pytest.mark.parametrize("layout", ["sparse", "dense", "empty", "hole_only", "tail_data"])
def test_seek_data_hole_map_matches_source_issue_14(pair: Pair, layout: str) -> None:
    """A file written on the source directly: the view walks the same map over it."""
    path = pair.backing / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if layout == "sparse":
            for index in range(0, 16, 3):
                os.pwrite(fd, b"x" * 8192, index * 64 * KiB)
            os.ftruncate(fd, 1 << 20)
        elif layout == "dense":
            os.pwrite(fd, b"y" * (300 * KiB), 0)
        elif layout == "hole_only":
            os.ftruncate(fd, 1 << 20)
        elif layout == "tail_data":
            os.pwrite(fd, b"z" * 100, (1 << 20) - 100)
        # Allocated now, not by writeback between the two summaries: ext4 adds an extent
        # block to st_blocks when delayed allocation places more than four extents.
        os.fsync(fd)
    finally:
        os.close(fd)
    assert describe(pair.view_dir / "f") == describe(path)


def test_seek_after_writes_through_view_matches_native_issue_14(pair: Pair) -> None:
    """Writes through the view, then the map: the kernel must not answer from its cache."""
    results = []
    for directory in (pair.native, pair.view_dir):
        make_sparse(directory / "f")
        fd = os.open(directory / "f", os.O_RDWR)
        try:
            os.pwrite(fd, b"w" * 4096, 300 * KiB)
            syscalls.fallocate(fd, PUNCH_HOLE | KEEP_SIZE, 0, 128 * KiB)
            results.append((seek_map(fd), past_end(fd)))
        finally:
            os.close(fd)
    assert results[1] == results[0]


USER_SCRIPT = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
def falloc(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
fd = os.open(os.path.join(DIRECTORY, "mine"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.pwrite(fd, b"u" * 65536, 0)
out = [errno_of(lambda: falloc(fd, 0, 65536, 65536)),
       errno_of(lambda: falloc(fd, 3, 4096, 8192)),
       os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 12288, os.SEEK_DATA)]
dst = os.open(os.path.join(DIRECTORY, "copy"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
out.append(os.copy_file_range(fd, dst, 1 << 20, 0, 0))
st = os.fstat(fd)
out += [st.st_size, st.st_uid, os.fstat(dst).st_size]
os.close(dst)
os.close(fd)
print(json.dumps(out))
"""


def test_fallocate_seek_copy_as_unprivileged_owner_match_native_issue_14(
        view: ViewHandle, pair: Pair, users: Users) -> None:
    """The calls run with the caller's credentials (backing.*, creds.as_caller)."""
    alice = users.alice
    for directory in (pair.native, pair.backing):
        os.chown(directory, alice.uid, alice.gid)
    view.ok(f"set {pair.name} owner={alice.name}")
    results = [py_as(alice, f"DIRECTORY = {str(d)!r}\n" + USER_SCRIPT)
               for d in (pair.native, pair.view_dir)]
    assert results[1] == results[0]
    assert results[0] == [0, 0, 4096, 12288, 131072, 131072, alice.uid, 131072]


def test_control_files_have_no_ranges_issue_14(view: ViewHandle) -> None:
    """fallocate on the ctl file is EOPNOTSUPP and seeking data in it ENXIO (it reads as
    size 0); never ENOSYS, which would switch the operation off for the whole view."""
    fd = os.open(view.path / ".fusemount" / "ctl", os.O_RDWR)
    try:
        with pytest.raises(OSError) as refused:
            syscalls.fallocate(fd, 0, 0, 4096)
        assert refused.value.errno == errno.EOPNOTSUPP
        for whence in (os.SEEK_DATA, os.SEEK_HOLE):
            with pytest.raises(OSError) as nothing:
                os.lseek(fd, 0, whence)
            assert nothing.value.errno == errno.ENXIO
    finally:
        os.close(fd)
