"""Stable inode numbers (SPEC 3, issue 13 item 3) and bounded descriptors (issue 12 item 3),
at the table and ops level: no mount, one process.

The number of an object is a function of the subtree's name, the filesystem it lives on
relative to the source, and its st_ino; these tests prove it survives forgetting, eviction
and a fresh table (a restart), differs between subtrees, avoids the control range and
collisions, and that a recycled st_ino gets a new FUSE generation.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import cast

import pyfuse3
import pytest

from fusemount.view.inodes import FIRST_DYNAMIC_INO, InodeTable
from fusemount.view.ops import Ops
from tests.support.ops import CTX, attach_live, make_ops, make_tree, run


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


async def _walk(ops: Ops, root_ino: int) -> dict[str, int]:
    """path -> number of every object under d0..d2, one lookup each."""
    out: dict[str, int] = {}
    for d in range(3):
        dir_entry = await ops.lookup(pyfuse3.InodeT(root_ino), f"d{d}".encode(), CTX)
        out[f"d{d}"] = dir_entry.st_ino
        for f in range(20):
            e = await ops.lookup(dir_entry.st_ino, f"f{f}".encode(), CTX)
            out[f"d{d}/f{f}"] = e.st_ino
    return out


async def _forget_all(ops: Ops, numbers: dict[str, int]) -> None:
    await ops.forget([(pyfuse3.InodeT(ino), 1) for ino in numbers.values()])


def test_number_survives_forget_and_a_fresh_table(tree: Path) -> None:
    ops, live = make_ops(tree)
    again, live2 = make_ops(tree)  # a restart: a new table, same subtree name

    async def body() -> None:
        first = await _walk(ops, live.root_ino)
        assert len(set(first.values())) == len(first)
        await _forget_all(ops, first)
        assert len(ops.inodes) == 1
        assert await _walk(ops, live.root_ino) == first
        assert await _walk(again, live2.root_ino) == first
        assert live2.root_ino == live.root_ino
        # st_ino as seen natively maps through one key per filesystem: no hidden counter.
        st = os.lstat(tree / "d1" / "f7")
        assert first["d1/f7"] == ops.inodes.stable_ino(live, st.st_dev, st.st_ino)

    run(body)
    live.close()
    live2.close()


def test_number_survives_descriptor_eviction(tree: Path) -> None:
    ops, live = make_ops(tree, max_cached_fds=4)

    async def body() -> None:
        first = await _walk(ops, live.root_ino)
        assert ops.inodes.statistics().evictions > 40
        assert await _walk(ops, live.root_ino) == first
        for ino in first.values():
            assert (await ops.getattr(pyfuse3.InodeT(ino), CTX)).st_ino == ino

    run(body)
    live.close()


def test_two_subtrees_over_one_source_number_apart(tree: Path) -> None:
    ops, live = make_ops(tree)
    other = attach_live(ops.ctx, tree, "t")

    async def body() -> None:
        a = await _walk(ops, live.root_ino)
        b = await _walk(ops, other.root_ino)
        assert not set(a.values()) & set(b.values())
        assert live.root_ino != other.root_ino

    run(body)
    live.close()
    other.close()


def test_numbers_avoid_the_control_range_and_each_other(tree: Path) -> None:
    ops, live = make_ops(tree)
    table = ops.inodes
    root_st = os.fstat(table.fd(table.node(live.root_ino)))
    key = table.stable_ino(live, root_st.st_dev, 0)
    # A made-up object whose plain number would be control inode 5.
    low = table.adopt(live, os.dup(live.source.root_fd if live.source else -1),
                      root_st.st_dev, key ^ 5, live.root_ino, b"low")
    assert low.ino >= FIRST_DYNAMIC_INO
    # Another filesystem whose plain number for some st_ino equals an existing node's.
    table.adopt(live, os.dup(table.fd(low)), 4242, 0, live.root_ino, b"mnt")
    other_key = table.stable_ino(live, 4242, 0)
    clash = table.adopt(live, os.dup(table.fd(low)), 4242, other_key ^ low.ino,
                        live.root_ino, b"clash")
    assert clash.ino != low.ino
    assert table.node(low.ino) is low and table.node(clash.ino) is clash
    live.close()


def test_recycled_st_ino_gets_a_new_generation(tree: Path) -> None:
    ops, live = make_ops(tree)
    table = ops.inodes

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        f0 = await ops.lookup(d0.st_ino, b"f0", CTX)
        assert f0.generation == 0
        node = table.node(f0.st_ino)
        # Evicted with a handle, then the same object again: same generation.
        table._evict(node)
        table._lru.pop(node.ino, None)
        assert node.fd < 0 and node.handle
        again = await ops.lookup(d0.st_ino, b"f0", CTX)
        assert (again.st_ino, again.generation) == (f0.st_ino, 0)
        # Evicted, then another object shows up under its (dev, st_ino): what a filesystem
        # recycling the number of a file deleted natively looks like to the table.
        table._evict(node)
        table._lru.pop(node.ino, None)
        other = os.open(tree / "d0" / "f1", os.O_PATH | os.O_CLOEXEC)
        revived = table.adopt(live, other, node.dev, node.st_ino, d0.st_ino, b"f0")
        assert revived is node and node.generation == 1
        # Its descriptor released (what unlink through the view does when the last name
        # goes): whatever shows up next under that (dev, st_ino) is a new object.
        released = table.node((await ops.lookup(d0.st_ino, b"f3", CTX)).st_ino)
        table.release_fd(released)
        fresh = os.open(tree / "d0" / "f3", os.O_PATH | os.O_CLOEXEC)
        table.adopt(live, fresh, released.dev, released.st_ino, d0.st_ino, b"f3")
        assert released.generation == 1
        attrs = await ops.getattr(pyfuse3.InodeT(released.ino), CTX)
        assert attrs.generation == 1

    run(body)
    live.close()


@pytest.mark.needs_root
def test_nested_mount_nodes_are_evicted_and_reopened(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "fmt-nested", str(inner)],
                   check=True)
    try:
        for f in range(50):
            (inner / f"f{f}").write_text(str(f))
        ops, live = make_ops(tmp_path, max_cached_fds=8)
    finally:
        subprocess.run(["umount", "-l", str(inner)], check=True)  # the clone keeps a copy

    async def body() -> None:
        d = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"inner", CTX)
        numbers = [(await ops.lookup(d.st_ino, f"f{f}".encode(), CTX)).st_ino
                   for f in range(50)]
        stats = ops.inodes.statistics()
        assert stats.held_fds <= 8 and stats.stuck_fds == 0
        assert stats.mount_fds == 1
        for f, ino in enumerate(numbers):
            info = await ops.open(pyfuse3.InodeT(ino), os.O_RDONLY, CTX)
            assert await ops.read(info.fh, 0, 10) == str(f).encode()
            await ops.release(info.fh)
        assert ops.inodes.statistics().reopens >= 40

    run(body)
    ops.inodes.close_all()
    live.close()


@pytest.mark.needs_root
def test_nodes_without_file_handles_are_stuck_and_over_budget(tmp_path: Path) -> None:
    subprocess.run(["mount", "-t", "ramfs", "fmt-ramfs", str(tmp_path)], check=True)
    try:
        for f in range(40):
            (tmp_path / f"f{f}").write_text(str(f))
        ops, live = make_ops(tmp_path, max_cached_fds=128)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], check=True)
    table: InodeTable = ops.inodes

    async def body() -> None:
        for f in range(40):
            await ops.lookup(pyfuse3.InodeT(live.root_ino), f"f{f}".encode(), CTX)
        stats = table.statistics()
        assert stats.stuck_fds == 40 > table.max_stuck_fds
        assert table.over_budget()
        cold = table.cold_entries(100)
        # The oldest stuck ones, just enough to come back under the budget.
        assert cold == [(live.root_ino, f"f{f}".encode())
                        for f in range(40 - table.max_stuck_fds)]
        assert table.cold_entries(100) == []  # already asked: not asked again

    run(body)
    ops.inodes.close_all()
    live.close()


def test_readdir_tells_a_recycled_st_ino_from_an_evicted_node(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops, live = make_ops(tree, max_cached_fds=4)
    # Every listing carries attributes: with entries never cached, no entry the kernel
    # got is still valid, so none is listed by name alone (test_readdir_names_only).
    ops.entry_timeout = 0.0
    table = ops.inodes
    listed: dict[bytes, tuple[int, int]] = {}

    def reply(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, off: int) -> bool:
        listed[name] = (attrs.st_ino, attrs.generation)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    # `.` and `..` go by name alone, with the directory's number: not listed here.
    monkeypatch.setattr(pyfuse3, "readdir_reply_name", lambda *args: True)

    async def listing(dir_ino: int) -> dict[bytes, tuple[int, int]]:
        listed.clear()
        fh = await ops.opendir(pyfuse3.InodeT(dir_ino), CTX)
        await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
        await ops.releasedir(fh)
        return dict(listed)

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        first = await listing(d0.st_ino)
        assert len(first) == 20 and all(gen == 0 for _, gen in first.values())
        # Evicted nodes found again: same numbers, same generation, and no re-open.
        opens = table.statistics().held_fds
        assert await listing(d0.st_ino) == first
        assert table.statistics().held_fds <= max(opens, 4)
        # One node's object replaced behind its back (a recycled st_ino looks like this:
        # same dev and st_ino, another file handle).
        node = table.node(first[b"f5"][0])
        if node.fd >= 0:
            table._lru.pop(node.ino, None)
            table._evict(node)
        assert node.fd < 0 and node.handle
        node.handle = node.handle[:-1] + bytes([node.handle[-1] ^ 0xFF])
        again = await listing(d0.st_ino)
        assert again[b"f5"] == (first[b"f5"][0], 1)
        assert {k: v for k, v in again.items() if k != b"f5"} == {
            k: v for k, v in first.items() if k != b"f5"}

    run(body)
    live.close()


def test_nested_filesystem_is_numbered_by_where_it_is_mounted_not_its_st_dev(
    tree: Path,
) -> None:
    """A tmpfs or loop mount inside the source gets another st_dev each time it is mounted:
    numbers derive from its mount point, so they survive that (and a restart)."""
    numbers = []
    for fake_dev in (111, 222):  # the same nested filesystem, mounted twice
        ops, live = make_ops(tree)
        table = ops.inodes
        root = table.node(live.root_ino)
        d0 = table.adopt(live, os.open(tree / "d0", os.O_PATH | os.O_CLOEXEC), root.dev,
                         os.lstat(tree / "d0").st_ino, live.root_ino, b"d0")
        mnt = table.adopt(live, os.dup(table.fd(d0)), fake_dev, 2, d0.ino, b"mnt")
        leaf = table.adopt(live, os.dup(table.fd(d0)), fake_dev, 77, mnt.ino, b"leaf")
        numbers.append((mnt.ino, leaf.ino))
        assert len({root.ino, d0.ino, mnt.ino, leaf.ino}) == 4
        table.close_all()
        live.close()
    assert numbers[0] == numbers[1]


@pytest.mark.needs_root
def test_stuck_descriptors_past_twice_the_budget_are_closed_and_reopen_by_name(
    tmp_path: Path,
) -> None:
    subprocess.run(["mount", "-t", "ramfs", "fmt-ramfs", str(tmp_path)], check=True)
    try:
        (tmp_path / "sub").mkdir()
        for f in range(100):
            (tmp_path / "sub" / f"f{f}").write_text(str(f))
        ops, live = make_ops(tmp_path, max_cached_fds=64)
    finally:
        subprocess.run(["umount", "-l", str(tmp_path)], check=True)
    table = ops.inodes
    cap = 2 * table.max_stuck_fds

    async def body() -> None:
        sub = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"sub", CTX)
        numbers = [(await ops.lookup(sub.st_ino, f"f{f}".encode(), CTX)).st_ino
                   for f in range(100)]
        assert table.statistics().held_fds <= cap
        orphans = [ino for ino in numbers if table.node(ino).orphan]
        assert len(orphans) >= 100 - cap
        # Used again before the kernel forgot it: re-opened by its name, same object.
        for f, ino in enumerate(numbers):
            info = await ops.open(pyfuse3.InodeT(ino), os.O_RDONLY, CTX)
            assert await ops.read(info.fh, 0, 10) == str(f).encode()
            await ops.release(info.fh)
        assert table.statistics().held_fds <= cap
        # Its name now holds another object: ESTALE, never the other object.
        victim = next(ino for ino in numbers if table.node(ino).orphan)
        name = table.node(victim).name
        sub_fd = table.fd(table.node(sub.st_ino))
        os.rename(name, b"moved", src_dir_fd=sub_fd, dst_dir_fd=sub_fd)
        os.mknod(name, dir_fd=sub_fd)
        with pytest.raises(pyfuse3.FUSEError) as refused:
            await ops.getattr(pyfuse3.InodeT(victim), CTX)
        assert refused.value.errno == errno.ESTALE

    run(body)
    ops.inodes.close_all()
    live.close()
