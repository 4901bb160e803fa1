"""Ops over a tmp source, in-process: the unit tests' view without a mount (SPEC 3).

Job: build an Ops on a fresh ViewContext with one subtree `s` attached from a directory, attach
more subtrees to it as control would, and give the fake RequestContext and the trio runner the
handler calls need. Never: mount anything, or reach the daemon's command path (subtrees are
pinned and published directly).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, cast

import pyfuse3
import trio

from fusemount.core.policy import Admins, Rules
from fusemount.core.records import Config, Identity, Kind, Limits, Policy, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable
from fusemount.host import sources
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


def make_tree(root: Path) -> Path:
    """root/d0..d2, each with twenty small files f0..f19 ("d/f"); returns root."""
    for d in range(3):
        (root / f"d{d}").mkdir()
        for f in range(20):
            (root / f"d{d}" / f"f{f}").write_text(f"{d}/{f}")
    return root


def attach_live(ctx: ViewContext, source: Path, name: str,
                policy: Policy | None = None) -> LiveSubtree:
    """Pin source and publish it as subtree name (owner root unless policy says), as
    control would."""
    root = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(root)
    identity = Identity(st.st_dev, st.st_ino, 0, "")
    opened = sources._pin(root, identity, ro=False)
    os.close(root)
    spec = SubtreeSpec(name, Kind.ATTACH, str(source), identity, policy or Policy(owner=0))
    live = LiveSubtree(ctx.table.add(spec), spec, opened)
    ctx.inodes.add_root(live)
    ctx.live[name] = live
    return live


def make_ops(source: Path, max_cached_fds: int = 8192,
             observer: RequestObserver | None = None,
             policy: Policy | None = None) -> tuple[Ops, LiveSubtree]:
    """Ops over a fresh view with source attached as subtree `s`."""
    config = Config(limits=Limits(max_cached_fds=max_cached_fds))
    inodes = InodeTable(max_cached_fds)
    ctx = ViewContext(config=config, rules=Rules(Admins(frozenset(), frozenset()), config.access),
                      table=SubtreeTable(config.limits), inodes=inodes,
                      handles=HandleTable(inodes, config.limits.max_open_files))
    live = attach_live(ctx, source, "s", policy)
    return Ops(ctx, observer=observer), live
