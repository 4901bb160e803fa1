"""ops-level tests: handlers called in-process over a tmp source, no mount.

They prove the bookkeeping the kernel relies on: lookup counts are exact, forgetting
everything empties the table and closes every descriptor, the descriptor cache stays
within max_cached_fds and re-opens evicted inodes from their file handles.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import pyfuse3
import pytest
import trio

from fusemount.core.policy import Admins, Rules
from fusemount.core.records import Config, Identity, Kind, Limits, Policy, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable
from fusemount.host import sources
from fusemount.view import ctlfiles
from fusemount.view.context import ViewContext
from fusemount.view.errors import RequestObserver
from fusemount.view.handles import HandleTable
from fusemount.view.inodes import InodeTable
from fusemount.view.live import LiveSubtree
from fusemount.view.ops import Ops

T = TypeVar("T")


@dataclasses.dataclass
class FakeCtx:
    uid: int = 0
    gid: int = 0
    pid: int = os.getpid()
    umask: int = 0o022


CTX = cast(pyfuse3.RequestContext, FakeCtx())


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def make_ops(source: Path, max_cached_fds: int = 8192,
             observer: RequestObserver | None = None,
             policy: Policy | None = None) -> tuple[Ops, LiveSubtree]:
    config = Config(limits=Limits(max_cached_fds=max_cached_fds))
    inodes = InodeTable(max_cached_fds)
    ctx = ViewContext(config=config, rules=Rules(Admins(frozenset(), frozenset()), config.access),
                      table=SubtreeTable(config.limits), inodes=inodes,
                      handles=HandleTable(inodes, config.limits.max_open_files))
    root = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(root)
    identity = Identity(st.st_dev, st.st_ino, 0, "")
    opened = sources._pin(root, identity, ro=False)
    os.close(root)
    spec = SubtreeSpec("s", Kind.ATTACH, str(source), identity, policy or Policy(owner=0))
    sid = ctx.table.add(spec)
    live = LiveSubtree(sid, spec, opened)
    inodes.add_root(live)
    ctx.live["s"] = live
    return Ops(ctx, observer=observer), live


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in range(3):
        (tmp_path / f"d{d}").mkdir()
        for f in range(20):
            (tmp_path / f"d{d}" / f"f{f}").write_text(f"{d}/{f}")
    return tmp_path


def test_forgetting_every_lookup_empties_the_table_and_closes_descriptors(tree: Path) -> None:
    before = open_fds()
    ops, live = make_ops(tree)

    async def body() -> None:
        looked: dict[int, int] = {}
        for d in range(3):
            dir_entry = await ops.lookup(pyfuse3.InodeT(live.root_ino), f"d{d}".encode(), CTX)
            looked[dir_entry.st_ino] = looked.get(dir_entry.st_ino, 0) + 1
            for f in range(20):
                for _ in range(2):  # two lookups of one name: one node, count 2
                    e = await ops.lookup(dir_entry.st_ino, f"f{f}".encode(), CTX)
                    looked[e.st_ino] = looked.get(e.st_ino, 0) + 1
        assert len(ops.inodes) == 1 + 3 + 60
        assert all(ops.inodes.node(ino).lookups == n for ino, n in looked.items())
        await ops.forget([(pyfuse3.InodeT(ino), n) for ino, n in looked.items()])

    run(body)
    assert len(ops.inodes) == 1  # only the subtree root, held by the subtree itself
    assert ops.inodes.statistics().held_fds == 0
    live.close()
    assert open_fds() == before


def test_descriptor_cache_is_bounded_and_evicted_inodes_reopen(tree: Path) -> None:
    ops, live = make_ops(tree, max_cached_fds=5)

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        inos = [(await ops.lookup(d0.st_ino, f"f{f}".encode(), CTX)).st_ino for f in range(20)]
        assert ops.inodes.statistics().held_fds <= 5
        assert ops.inodes.statistics().evictions >= 15
        # Every evicted inode still answers, re-opened from the handle we minted.
        for f, ino in enumerate(inos):
            attrs = await ops.getattr(ino, CTX)
            assert attrs.st_size == len(f"0/{f}")
            info = await ops.open(ino, os.O_RDONLY, CTX)
            assert await ops.read(info.fh, 0, 100) == f"0/{f}".encode()
            await ops.release(info.fh)
        assert ops.inodes.statistics().reopens >= 15
        assert ops.inodes.statistics().held_fds <= 5

    run(body)
    live.close()


def test_open_file_pins_its_inode_against_eviction(tree: Path) -> None:
    ops, live = make_ops(tree, max_cached_fds=2)

    async def body() -> None:
        d1 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d1", CTX)
        first = await ops.lookup(d1.st_ino, b"f0", CTX)
        info = await ops.open(first.st_ino, os.O_RDONLY, CTX)
        for f in range(1, 20):
            await ops.lookup(d1.st_ino, f"f{f}".encode(), CTX)
        assert ops.inodes.node(first.st_ino).fd >= 0
        os.unlink(tree / "d1" / "f0")  # natively: the open file must keep working
        assert await ops.read(info.fh, 0, 10) == b"1/0"
        await ops.release(info.fh)

    run(body)
    live.close()


def test_dot_and_dotdot_are_never_looked_up_on_the_source(tree: Path) -> None:
    ops, live = make_ops(tree)

    async def body() -> None:
        for name in (b".", b"..", b"a/b", b""):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.lookup(pyfuse3.InodeT(live.root_ino), name, CTX)
            assert info.value.errno == errno.ENOENT

    run(body)
    assert len(ops.inodes) == 1
    live.close()


class _Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def observe(self, op: str, seconds: float, errno_: int, args: tuple[object, ...]) -> None:
        self.seen.append((op, errno_))


def test_requests_are_told_to_the_injected_observer(tree: Path) -> None:
    """issue 16 item 4: the handler boundary reports to the observer Ops was given."""
    observer = _Observer()
    ops, live = make_ops(tree, observer=observer)
    run(lambda: ops.getattr(pyfuse3.InodeT(live.root_ino), CTX))
    with pytest.raises(pyfuse3.FUSEError):
        run(lambda: ops.getattr(pyfuse3.InodeT(987654), CTX))
    assert [op for op, _ in observer.seen] == ["getattr", "getattr"]
    assert observer.seen[0][1] == 0 and observer.seen[1][1] != 0


@pytest.mark.parametrize("ino", [ctlfiles.ROOT_INO, ctlfiles.CTL_DIR_INO, ctlfiles.CTL_INO])
def test_readlink_of_a_control_object_is_einval(tree: Path, ino: int) -> None:
    """A control object is no symlink: EINVAL, as readlink(2) of any non-symlink (it was
    ESTALE, from looking the inode up among subtree nodes)."""
    ops, _ = make_ops(tree)
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(lambda: ops.readlink(pyfuse3.InodeT(ino), CTX))
    assert caught.value.errno == errno.EINVAL
