"""`..` walks and file handles: the kernel resolves `..` in the view, the daemon never does.

SPEC 1: `.` and `..` are never looked up on a source. Through the view `..` from a subtree
root leads to the view root and a path like `VIEW/A/sub/../../B/x` crosses subtrees only as a
path in the view. A file handle minted on the view must never decode, through the daemon,
into anything but the object it was minted for.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.dirs import fresh_dir
from tests.support.escape import (
    Trees,
    assert_no_secret,
    build_original,
    name_to_handle,
    open_by_handle,
    original,
    snapshot,
)


def _second_source(test_root: Path) -> Path:
    other = fresh_dir(test_root, "other-")
    build_original(other)
    (other / "only-in-b").write_bytes(b"b\n")
    return other


@pytest.mark.timeout(60)
def test_dotdot_paths_through_view_stay_view_paths(
    view: ViewHandle, trees: Trees, test_root: Path
) -> None:
    other = _second_source(test_root)
    view.ok(f"attach a {trees.source}")
    view.ok(f"attach b {other}")
    v = view.path
    assert (v / "a" / ".." / "a" / "hello.txt").read_bytes() == original("hello.txt")
    assert (v / "a" / "sub" / ".." / ".." / "b" / "only-in-b").read_bytes() == b"b\n"
    assert (v / "a" / "sub" / "deep" / ".." / "file").read_bytes() == original("sub/file")
    assert sorted(os.listdir(v / "a" / "sub" / "..")) == sorted(os.listdir(trees.source))
    assert sorted(os.listdir(v / "a" / "..")) == [".fusemount", "a", "b"]
    assert_no_secret(snapshot(v / "a"), "VIEW/a")


@pytest.mark.timeout(60)
def test_dotdot_opened_relative_to_subtree_descriptors_reaches_view_not_source_parent(
    view: ViewHandle, trees: Trees
) -> None:
    view.ok(f"attach a {trees.source}")
    v = view.path
    root_fd = os.open(v / "a", os.O_RDONLY | os.O_DIRECTORY)
    sub_fd = os.open(v / "a" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root_fd)
        try:
            st = os.fstat(up)
            assert (st.st_dev, st.st_ino) == (os.stat(v).st_dev, os.stat(v).st_ino)
            assert sorted(os.listdir(up)) == [".fusemount", "a"], "`..` left the view root"
        finally:
            os.close(up)
        up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=sub_fd)
        try:
            assert os.fstat(up).st_ino == os.stat(v / "a").st_ino
            assert sorted(os.listdir(up)) == sorted(os.listdir(trees.source))
        finally:
            os.close(up)
        # Two levels up from the subtree root is the view's parent directory, natively.
        assert os.stat("../..", dir_fd=root_fd).st_ino == os.stat(v.parent).st_ino
        assert os.stat(".", dir_fd=sub_fd).st_ino == os.stat(v / "a" / "sub").st_ino
        with pytest.raises(FileNotFoundError):
            os.stat(f"../{trees.decoy.name}", dir_fd=root_fd)
    finally:
        os.close(root_fd)
        os.close(sub_fd)
    # The daemon is still answering.
    assert (v / "a" / "hello.txt").read_bytes() == original("hello.txt")


@pytest.mark.timeout(60)
def test_file_handle_minted_on_view_never_decodes_to_another_object(
    view: ViewHandle, trees: Trees
) -> None:
    view.ok(f"attach a {trees.source}")
    v = view.path
    paths = {"file": v / "a" / "sub" / "deep" / "file", "dir": v / "a" / "sub"}
    handles = {what: name_to_handle(p) for what, p in paths.items()}

    def decoded(mount_fd: int, what: str) -> str:
        try:
            fd = open_by_handle(mount_fd, handles[what], os.O_RDONLY)
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0, "?")
        try:
            st = os.fstat(fd)
            mine = os.stat(paths[what])
            assert (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino), (
                f"handle of {what} decoded to another object")
            return "same"
        finally:
            os.close(fd)

    mount_fd = os.open(v, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert {w: decoded(mount_fd, w) for w in handles} == {"file": "same", "dir": "same"}
    finally:
        os.close(mount_fd)
    # After a restart the kernel knows none of the old inodes: decoding would need the daemon
    # to look up `.`/`..` by number, which it must refuse (ESTALE), not guess.
    view.restart()
    mount_fd = os.open(v, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = {w: decoded(mount_fd, w) for w in handles}
    finally:
        os.close(mount_fd)
    assert set(got.values()) <= {"ESTALE", "same"}, got
    assert (v / "a" / "sub" / "deep" / "file").read_bytes() == original("sub/deep/file")
