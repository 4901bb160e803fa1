"""Renames and hard links between subtrees: EXDEV, even over one backing filesystem (SPEC 3).

All subtrees live on one FUSE mount, so the kernel lets such requests through to the daemon;
only the daemon can stop an object moving from one subtree (and its grants) to another. The
sharpest case is one source attached under two names, where the backing rename would succeed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.dirs import fresh_dir
from tests.support.escape import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Trees,
    build_original,
    outcomes,
    rename_paths,
    snapshot,
)
from tests.support.users import Users, py_as


def _cross_moves(v: Path) -> dict[str, str]:
    """Every way of moving or linking a name from VIEW/a into VIEW/b; name -> errno name."""
    a, b = v / "a", v / "b"
    attempts: dict[str, Callable[[], None]] = {
        "rename file": lambda: os.rename(a / "hello.txt", b / "moved"),
        "rename file over existing": lambda: os.rename(a / "hello.txt", b / "hello.txt"),
        "rename dir": lambda: os.rename(a / "sub", b / "sub2"),
        "rename noreplace": lambda: rename_paths(a / "hello.txt", b / "moved", RENAME_NOREPLACE),
        "rename exchange": lambda: rename_paths(a / "hello.txt", b / "d" / "file",
                                                RENAME_EXCHANGE),
        "rename into b's subdir": lambda: os.rename(a / "sub" / "file", b / "d" / "f2"),
        "link": lambda: os.link(a / "hello.txt", b / "linked"),
        "link into b's subdir": lambda: os.link(a / "sub" / "file", b / "sub" / "linked"),
    }
    return outcomes(attempts)


@pytest.mark.timeout(60)
def test_rename_and_link_between_two_names_of_one_source_fail_exdev(
    view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    view.ok(f"attach a {trees.source}")
    view.ok(f"attach b {trees.source}")
    got = _cross_moves(view.path)
    assert got == dict.fromkeys(got, "EXDEV")
    assert snapshot(trees.source) == before


@pytest.mark.timeout(60)
def test_rename_and_link_between_subtrees_on_one_filesystem_fail_exdev(
    view: ViewHandle, trees: Trees, test_root: Path
) -> None:
    other = fresh_dir(test_root, "other-")
    build_original(other)
    assert os.stat(other).st_dev == os.stat(trees.source).st_dev
    before = (snapshot(trees.source), snapshot(other))
    view.ok(f"attach a {trees.source}")
    view.ok(f"attach b {other}")
    got = _cross_moves(view.path)
    assert got == dict.fromkeys(got, "EXDEV")
    assert (snapshot(trees.source), snapshot(other)) == before


@pytest.mark.timeout(60)
def test_rename_from_readonly_name_into_writable_name_of_one_source_is_refused(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    """alice may write in `a` but only read `b`, both the same source: moving an object out of
    `b` through `a` would be a write to what she may only read. EXDEV (the move itself) or
    EROFS (the read-only side) are both right; success is not."""
    trees.source.chmod(0o777)
    mine = trees.source / "alice.txt"
    mine.write_bytes(b"alice\n")
    os.chown(mine, users.alice.uid, users.alice.gid)
    before = snapshot(trees.source)
    alice = users.alice.name
    view.ok(f"attach a {trees.source} allow={alice}:rw")
    view.ok(f"attach b {trees.source} allow={alice}:ro")
    v = str(view.path)
    got = py_as(users.alice, f"""
v = {v!r}
print(json.dumps({{
    "rename b->a": errno_of(lambda: os.rename(v + "/b/alice.txt", v + "/a/stolen")),
    "rename a->b": errno_of(lambda: os.rename(v + "/a/alice.txt", v + "/b/stolen")),
    "link b->a": errno_of(lambda: os.link(v + "/b/alice.txt", v + "/a/stolen")),
    "link a->b": errno_of(lambda: os.link(v + "/a/alice.txt", v + "/b/stolen")),
}}))
""")
    assert isinstance(got, dict)
    assert all(code in ("EXDEV", "EROFS") for code in got.values()), got
    assert snapshot(trees.source) == before
