"""Attacks on the source *path* after attach: over-mounts, lazy unmounts, renames, symlinks.

SPEC 1: after attach no path is resolved again, so none of these can redirect one operation.
Every test attaches first, attacks the path natively, and only then touches the view, so each
lookup the view makes happens after the attack. It then proves three things: the view shows
exactly the original tree, nothing of the decoy is visible, and writes through the view land
in the original objects (checked through descriptors opened before the attack) and never in
the decoy.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle, is_mounted
from tests.support.escape import (
    SECRET,
    SECRET_NAME,
    Snapshot,
    Trees,
    assert_no_secret,
    build_decoy,
    build_original,
    mounted,
    original,
    put_decoy_in_place,
    run,
    snapshot,
)

WRITTEN = b"written through the view\n"


@contextlib.contextmanager
def _pinned(directory: Path) -> Iterator[int]:
    """An O_PATH descriptor of directory for the block: whatever happens to the path later,
    it still names the original."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _prove_view_shows_original(view_dir: Path, expected: Snapshot) -> None:
    seen = snapshot(view_dir)
    assert_no_secret(seen, str(view_dir))
    assert seen == expected, f"{view_dir} does not show the original tree"


def _write_through(view_dir: Path) -> None:
    """Modify the subtree through the view in every way that names a new or existing object."""
    (view_dir / "new.txt").write_bytes(WRITTEN)
    (view_dir / "newdir").mkdir()
    (view_dir / "newdir" / "inner").write_bytes(WRITTEN)
    with open(view_dir / "hello.txt", "ab") as f:
        f.write(WRITTEN)
    os.rename(view_dir / "sub" / "file", view_dir / "sub" / "renamed")


def _expected_after_write(before: Snapshot) -> Snapshot:
    after = dict(before)
    after["new.txt"] = WRITTEN
    after["newdir"] = "<dir>"
    after["newdir/inner"] = WRITTEN
    after["hello.txt"] = original("hello.txt") + WRITTEN
    after["sub/renamed"] = after.pop("sub/file")
    return after


@pytest.mark.timeout(60)
def test_source_overmounted_by_bind_after_attach_is_not_followed(
    view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    with _pinned(trees.source) as pinned:
        view.ok(f"attach data {trees.source}")
        with mounted(["--bind", str(trees.decoy)], trees.source):
            assert SECRET_NAME in os.listdir(trees.source), "the attack did not take effect"
            _prove_view_shows_original(view.path / "data", before)
            _write_through(view.path / "data")
            _prove_view_shows_original(view.path / "data", _expected_after_write(before))
            trees.decoy_unchanged()
        assert snapshot(pinned) == _expected_after_write(before)


@pytest.mark.timeout(60)
def test_directory_inside_source_overmounted_by_bind_after_attach_is_not_followed(
    view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    with _pinned(trees.source / "sub") as pinned_sub:
        view.ok(f"attach data {trees.source}")
        with mounted(["--bind", str(trees.decoy / "sub")], trees.source / "sub"):
            assert SECRET_NAME in os.listdir(trees.source / "sub"), "attack did not take effect"
            _prove_view_shows_original(view.path / "data", before)
            (view.path / "data" / "sub" / "new").write_bytes(WRITTEN)
            os.mkdir(view.path / "data" / "sub" / "deep" / "newdir")
            assert (view.path / "data" / "sub" / "file").read_bytes() == original("sub/file")
            trees.decoy_unchanged()
        sub = snapshot(pinned_sub)
        assert sub["new"] == WRITTEN
        assert sub["deep/newdir"] == "<dir>"


@pytest.mark.timeout(60)
def test_file_inside_source_overmounted_by_bind_after_attach_is_not_followed(
    view: ViewHandle, trees: Trees
) -> None:
    view.ok(f"attach data {trees.source}")
    target = trees.source / "sub" / "file"
    with mounted(["--bind", str(trees.decoy / "sub" / "file")], target):
        assert target.read_bytes() == SECRET, "the attack did not take effect"
        assert (view.path / "data" / "sub" / "file").read_bytes() == original("sub/file")
        with open(view.path / "data" / "sub" / "file", "ab") as f:
            f.write(WRITTEN)
        trees.decoy_unchanged()
    assert target.read_bytes() == original("sub/file") + WRITTEN


@pytest.mark.timeout(60)
def test_source_tmpfs_lazily_unmounted_after_attach_keeps_serving_original(
    view: ViewHandle, source: Path
) -> None:
    # Underneath the tmpfs sits a decoy: after `umount -l` the path shows it.
    build_decoy(source)
    under = snapshot(source)
    with mounted(["-t", "tmpfs", "-o", "size=4m,mode=0755", "none"], source):
        build_original(source)
        before = snapshot(source)
        with _pinned(source) as pinned:
            view.ok(f"attach data {source}")
            run(["umount", "-l", str(source)])
            assert not is_mounted(source)
            assert SECRET_NAME in os.listdir(source), "the attack did not take effect"
            _prove_view_shows_original(view.path / "data", before)
            _write_through(view.path / "data")
            _prove_view_shows_original(view.path / "data", _expected_after_write(before))
            assert snapshot(pinned) == _expected_after_write(before)
            assert snapshot(source) == under, "a write through the view reached the path"


def _swap_source_after_attach(view: ViewHandle, trees: Trees,
                              how: Callable[[Path, Path], None]) -> None:
    """Attach the source, move it away, put the decoy at its path with how: the view keeps
    serving the original tree, and a write through the view lands in the moved original."""
    before = snapshot(trees.source)
    view.ok(f"attach data {trees.source}")
    moved = put_decoy_in_place(trees, how)
    _prove_view_shows_original(view.path / "data", before)
    _write_through(view.path / "data")
    assert snapshot(moved) == _expected_after_write(before)


@pytest.mark.timeout(60)
def test_source_renamed_and_replaced_by_symlink_after_attach_is_not_followed(
    view: ViewHandle, trees: Trees
) -> None:
    _swap_source_after_attach(view, trees, os.symlink)
    trees.decoy_unchanged()
    # A fresh attach of the symlinked path, and of a path through it, meets the symlink.
    table = view.mounts_json()
    assert view.err(f"attach again {trees.source}") == errno.ELOOP
    assert view.err(f"attach again2 {trees.source}/sub") == errno.ELOOP
    assert view.mounts_json() == table
    assert sorted(os.listdir(view.path)) == [".fusemount", "data"]


@pytest.mark.timeout(60)
def test_source_replaced_by_another_directory_after_attach_is_not_followed(
    view: ViewHandle, trees: Trees
) -> None:
    _swap_source_after_attach(view, trees, os.rename)
    assert SECRET_NAME in os.listdir(trees.source)
    assert "new.txt" not in os.listdir(trees.source)


@pytest.mark.timeout(60)
def test_tmpfs_mounted_inside_source_after_attach_is_not_visible(
    view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    with _pinned(trees.source / "sub") as pinned_sub:
        view.ok(f"attach data {trees.source}")
        inside = trees.source / "sub"
        with mounted(["-t", "tmpfs", "-o", "size=4m,mode=0755", "none"], inside):
            (inside / SECRET_NAME).write_bytes(SECRET)
            (inside / "file").write_bytes(SECRET)
            _prove_view_shows_original(view.path / "data", before)
            (view.path / "data" / "sub" / "new").write_bytes(WRITTEN)
            assert sorted(os.listdir(inside)) == [SECRET_NAME, "file"], "write reached tmpfs"
        assert snapshot(pinned_sub)["new"] == WRITTEN
