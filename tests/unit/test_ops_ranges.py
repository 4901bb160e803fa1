"""ops-level tests of the issue 14 handlers (view/ranges.py): no mount, a tmp source.

They pin what the mounted tests cannot provoke: a source answering ENOSYS must reach the
kernel as EOPNOTSUPP (ENOSYS would switch the operation off for the whole view), statfs of
a node is its source's while the control inodes get the root's sum, and handles stay exact.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest

from fusemount.host import backing
from fusemount.view import ranges
from tests.support.ops import CTX, make_ops, open_fds, run


def test_enosys_from_source_reaches_kernel_as_eopnotsupp_issue_14(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_bytes(b"data")
    ops, live = make_ops(tmp_path)

    def no_such_call(*args: object) -> None:
        raise OSError(errno.ENOSYS, "not implemented by this source")

    monkeypatch.setattr(backing, "fallocate", no_such_call)
    monkeypatch.setattr(backing, "copy_range", no_such_call)

    async def body() -> None:
        entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"f", CTX)
        info = await ops.open(entry.st_ino, os.O_RDWR, CTX)
        try:
            with pytest.raises(pyfuse3.FUSEError) as refused:
                await ops.fallocate(info.fh, 0, 0, 4096, CTX)
            assert refused.value.errno == errno.EOPNOTSUPP
            with pytest.raises(pyfuse3.FUSEError) as refused:
                await ops.copy_file_range(info.fh, 0, info.fh, 8, 4, 0, CTX)
            assert refused.value.errno == errno.EOPNOTSUPP
        finally:
            await ops.release(info.fh)
        await ops.forget([(entry.st_ino, 1)])

    run(body)
    live.close()


def test_statfs_of_node_is_its_source_and_of_root_the_sum_issue_14(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    before = open_fds()
    ops, live = make_ops(tmp_path)

    async def body() -> None:
        entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d", CTX)
        native = os.statvfs(tmp_path)
        got = await ops.statfs_inode(entry.st_ino, CTX)
        assert (got.f_blocks, got.f_frsize, got.f_files, got.f_namemax) == (
            native.f_blocks, native.f_frsize, native.f_files, native.f_namemax)
        root = await ops.statfs_inode(pyfuse3.ROOT_INODE, CTX)
        assert root.f_frsize == 4096
        assert root.f_blocks == native.f_blocks * native.f_frsize // 4096
        assert ranges.statvfs_data(native).f_bavail == native.f_bavail
        await ops.forget([(entry.st_ino, 1)])

    run(body)
    live.close()
    assert open_fds() == before
