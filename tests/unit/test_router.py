"""ops.py as a router (issue 16 item 4): each request on the root, `.fusemount/` or one of
their open files is answered by the control files, with the errno it always had; the
subtree side never sees a control inode or handle.

The errnos below are the ones the handlers answered before the router existed (this table
passed against that code): a control object that does not support an operation must keep
refusing it the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
from pyfuse3 import FileHandleT, FileNameT, InodeT, ModeT, XAttrNameT

from fusemount.core.records import Policy
from fusemount.view import ctlfiles
from fusemount.view.ops import Ops
from fusemount.view.xattrs import ACL_ACCESS
from tests.support.ops import CTX, make_ops, run

ROOT = InodeT(ctlfiles.ROOT_INO)
CTL_DIR = InodeT(ctlfiles.CTL_DIR_INO)
CTL = InodeT(ctlfiles.CTL_INO)
MOUNTS = InodeT(ctlfiles.MOUNTS_INO)
_OK = 0


@dataclasses.dataclass
class _Fields:
    """pyfuse3.SetattrFields, whose attributes only pyfuse3 may set."""

    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


def _attrs_chmod() -> tuple[pyfuse3.EntryAttributes, pyfuse3.SetattrFields]:
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o600
    return attr, cast(pyfuse3.SetattrFields, _Fields(update_mode=True))


# (what, request on an ops whose subtree root is `sub`, errno or _OK). Inode requests only.
Request = Callable[[Ops, InodeT], Awaitable[object]]
_INODE_REQUESTS: list[tuple[str, Request, int]] = [
    ("mkdir in root", lambda ops, sub: ops.mkdir(ROOT, FileNameT(b"x"), ModeT(0o755), CTX),
     errno.EACCES),
    ("mkdir in .fusemount",
     lambda ops, sub: ops.mkdir(CTL_DIR, FileNameT(b"x"), ModeT(0o755), CTX), errno.EACCES),
    ("mknod in root", lambda ops, sub: ops.mknod(
        ROOT, FileNameT(b"x"), ModeT(stat.S_IFREG | 0o644), 0, CTX), errno.EACCES),
    ("symlink in .fusemount", lambda ops, sub: ops.symlink(
        CTL_DIR, FileNameT(b"x"), FileNameT(b"ctl"), CTX), errno.EACCES),
    ("create in root", lambda ops, sub: ops.create(
        ROOT, FileNameT(b"x"), ModeT(0o644), pyfuse3.FlagT(os.O_WRONLY | os.O_CREAT), CTX),
     errno.EACCES),
    ("unlink ctl", lambda ops, sub: ops.unlink(CTL_DIR, FileNameT(b"ctl"), CTX), errno.EACCES),
    ("rmdir .fusemount",
     lambda ops, sub: ops.rmdir(ROOT, FileNameT(b".fusemount"), CTX), errno.EACCES),
    ("rename ctl into a subtree", lambda ops, sub: ops.rename(
        CTL_DIR, FileNameT(b"ctl"), sub, FileNameT(b"x"), pyfuse3.FlagT(0), CTX), errno.EACCES),
    ("rename out of a subtree into the root", lambda ops, sub: ops.rename(
        sub, FileNameT(b"f"), ROOT, FileNameT(b"x"), pyfuse3.FlagT(0), CTX), errno.EACCES),
    ("link ctl into a subtree",
     lambda ops, sub: ops.link(CTL, sub, FileNameT(b"hard"), CTX), errno.EXDEV),
    ("link a subtree into .fusemount",
     lambda ops, sub: ops.link(sub, CTL_DIR, FileNameT(b"hard"), CTX), errno.EACCES),
    ("readlink root", lambda ops, sub: ops.readlink(ROOT, CTX), errno.EINVAL),
    ("readlink ctl", lambda ops, sub: ops.readlink(CTL, CTX), errno.EINVAL),
    ("chmod ctl", lambda ops, sub: ops.setattr(CTL, *_attrs_chmod(), None, CTX), errno.EPERM),
    ("getattr mounts", lambda ops, sub: ops.getattr(MOUNTS, CTX), _OK),
    ("getattr unknown control inode", lambda ops, sub: ops.getattr(InodeT(999), CTX),
     errno.ENOENT),
    ("lookup in .fusemount",
     lambda ops, sub: ops.lookup(CTL_DIR, FileNameT(b"nothing"), CTX), errno.ENOENT),
    ("access ctl", lambda ops, sub: ops.access(CTL, ModeT(os.W_OK), CTX), _OK),
    ("getxattr ctl", lambda ops, sub: ops.getxattr(CTL, XAttrNameT(b"user.x"), CTX),
     pyfuse3.ENOATTR),
    ("getxattr root ACL", lambda ops, sub: ops.getxattr(ROOT, XAttrNameT(ACL_ACCESS), CTX),
     pyfuse3.ENOATTR),
    ("listxattr root", lambda ops, sub: ops.listxattr(ROOT, CTX), _OK),
    ("setxattr .fusemount", lambda ops, sub: ops.setxattr(
        CTL_DIR, XAttrNameT(b"user.x"), b"v", CTX), errno.EPERM),
    ("setxattr root ACL", lambda ops, sub: ops.setxattr(
        ROOT, XAttrNameT(ACL_ACCESS), b"v", CTX), errno.EPERM),
    ("removexattr ctl",
     lambda ops, sub: ops.removexattr(CTL, XAttrNameT(b"user.x"), CTX), errno.EPERM),
    ("open .fusemount",
     lambda ops, sub: ops.open(CTL_DIR, pyfuse3.FlagT(os.O_RDONLY), CTX), errno.EISDIR),
    ("open mounts for writing",
     lambda ops, sub: ops.open(MOUNTS, pyfuse3.FlagT(os.O_WRONLY), CTX), errno.EACCES),
    ("opendir ctl", lambda ops, sub: ops.opendir(CTL, CTX), errno.ENOTDIR),
    ("statfs .fusemount", lambda ops, sub: ops.statfs_inode(CTL_DIR, CTX), _OK),
]


async def _answer(request: Awaitable[object]) -> int:
    try:
        await request
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return _OK


@pytest.mark.parametrize(("what", "request_", "expected"), _INODE_REQUESTS,
                         ids=[what for what, _, _ in _INODE_REQUESTS])
def test_control_inode_requests_answer_their_errno_issue_16(
        tmp_path: Path, what: str, request_: Request, expected: int) -> None:
    (tmp_path / "f").write_text("data")
    ops, live = make_ops(tmp_path)
    assert run(lambda: _answer(request_(ops, InodeT(live.root_ino)))) == expected
    assert len(ops.inodes) == 1 and len(ops.handles) == 0  # nothing adopted or opened
    live.close()


@pytest.mark.parametrize("what", ["rename", "link"])
def test_request_with_one_control_end_checks_the_subtree_end_first_issue_16(
        tmp_path: Path, what: str) -> None:
    """A read-only subtree refuses with EROFS before the control end is looked at, as it
    did when one handler checked both ends in that order."""
    (tmp_path / "f").write_text("data")
    ops, live = make_ops(tmp_path, policy=Policy(owner=0, ro=True))
    sub = InodeT(live.root_ino)
    request: Awaitable[object]
    if what == "rename":
        request = ops.rename(sub, FileNameT(b"f"), ROOT, FileNameT(b"x"), pyfuse3.FlagT(0), CTX)
    else:
        request = ops.link(CTL, sub, FileNameT(b"hard"), CTX)
    assert run(lambda: _answer(request)) == errno.EROFS
    live.close()


def test_control_handle_requests_answer_their_errno_issue_16(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data")
    ops, live = make_ops(tmp_path)
    sub = InodeT(live.root_ino)

    async def body() -> None:
        entry = await ops.lookup(sub, FileNameT(b"f"), CTX)
        data = (await ops.open(entry.st_ino, pyfuse3.FlagT(os.O_RDWR), CTX)).fh
        version = (await ops.open(InodeT(ctlfiles.VERSION_INO),
                                  pyfuse3.FlagT(os.O_RDONLY), CTX)).fh
        folder = await ops.opendir(CTL_DIR, CTX)
        assert (await ops.read(version, 0, 100)).startswith(b"fusemount ")
        answers = {
            "fallocate": await _answer(ops.fallocate(version, 0, 0, 10, CTX)),
            "lseek": await _answer(ops.lseek(version, 0, os.SEEK_DATA)),
            "copy from control": await _answer(
                ops.copy_file_range(version, 0, data, 0, 10, 0, CTX)),
            "copy to control": await _answer(
                ops.copy_file_range(data, 0, version, 0, 10, 0, CTX)),
            "write version": await _answer(ops.write(version, 0, b"x")),
            "fsync": await _answer(ops.fsync(version, False)),
            "fsyncdir": await _answer(ops.fsyncdir(folder, False)),
            "unknown fh": await _answer(ops.read(FileHandleT(99999), 0, 10)),
        }
        assert answers == {
            "fallocate": errno.EOPNOTSUPP, "lseek": errno.ENXIO,
            "copy from control": errno.EOPNOTSUPP, "copy to control": errno.EOPNOTSUPP,
            "write version": errno.EBADF, "fsync": _OK, "fsyncdir": _OK,
            "unknown fh": errno.EBADF,
        }
        await ops.release(version)
        await ops.releasedir(folder)
        await ops.release(data)
        await ops.forget([(entry.st_ino, 1)])

    run(body)
    assert len(ops.handles) == 0 and len(ops.inodes) == 1
    live.close()


class _Recorder:
    """Wraps one part of the subtree side and records each call it gets."""

    def __init__(self, real: object, seen: list[tuple[str, tuple[object, ...]]]) -> None:
        self._real = real
        self._seen = seen

    def __getattr__(self, name: str) -> Callable[..., object]:
        method = getattr(self._real, name)

        def call(*args: object) -> object:
            self._seen.append((name, args))
            return method(*args)

        return call


def test_subtree_side_never_sees_a_control_inode_or_handle_issue_16(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_text("data")
    ops, live = make_ops(tmp_path)
    sub = InodeT(live.root_ino)
    seen: list[tuple[str, tuple[object, ...]]] = []
    for part in ("subtree", "xattrs", "ranges"):
        monkeypatch.setattr(ops, part, _Recorder(getattr(ops, part), seen))

    async def body() -> None:
        for _, request, _ in _INODE_REQUESTS:
            await _answer(request(ops, sub))
        ctl = (await ops.open(CTL, pyfuse3.FlagT(os.O_RDWR), CTX)).fh
        folder = await ops.opendir(ROOT, CTX)
        for call in (ops.read(ctl, 0, 10), ops.write(ctl, 0, b"x"), ops.fsync(ctl, True),
                     ops.fallocate(ctl, 0, 0, 1, CTX), ops.lseek(ctl, 0, os.SEEK_HOLE),
                     ops.copy_file_range(ctl, 0, ctl, 1, 1, 0, CTX),
                     ops.fsyncdir(folder, True), ops.release(ctl), ops.releasedir(folder)):
            await _answer(call)

    run(body)
    # Only the two requests with one end in a subtree reach it, naming that end alone.
    assert [(name, args[0]) for name, args in seen] == [
        ("refuse_across", sub), ("refuse_across", sub)]
    assert len(ops.handles) == 0
    live.close()


def test_ops_is_the_only_operations_class_issue_16() -> None:
    """The control files and the subtree side are plain collaborators of the router, not
    pyfuse3.Operations layers stacked into one class."""
    import importlib
    import inspect
    import pkgutil

    import fusemount.view

    found = set()
    for info in pkgutil.iter_modules(fusemount.view.__path__, "fusemount.view."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, pyfuse3.Operations) and cls is not pyfuse3.Operations:
                found.add(f"{cls.__module__}.{cls.__qualname__}")
    assert found == {"fusemount.view.ops.Ops"}
