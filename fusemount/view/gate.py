"""What every subtree handler does first: who asks, may they, and how a backing call runs
(SPEC 5).

Steps holds the subtree side's collaborators and the steps its handlers share (subtree.py,
xattrs.py, ranges.py): the subtree gate (access, read-only, detached), attributes, adopting
new objects, bounding the inode table, and running a backing call inline or offloaded.
It never sees a control inode: ops.py routes those to ctlfiles before any step runs.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3
from pyfuse3 import (
    EntryAttributes,
    FileNameT,
    InodeT,
    RequestContext,
)

from fusemount.core.records import Access, Caller
from fusemount.host import backing
from fusemount.view.attrs import fill
from fusemount.view.context import ViewContext
from fusemount.view.inodes import Node
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import Offloader
from fusemount.view.registry import Registry

log = logging.getLogger(__name__)


NOBODY = 65534  # the uid and gid root acts with on a squashed subtree


@dataclass(frozen=True, slots=True)
class SquashedRoot(Caller):
    """Root on a `squash=root` subtree, acting as nobody. Its type, never its uid, says it
    was squashed: a real user with uid 65534 is an ordinary caller (issue 12 item 12).

    The kernel checked the request as root (CAP_DAC_OVERRIDE), so every backing call of a
    squashed root runs as nobody for the backing filesystem to decide as it would natively.
    """


def squashed_root(pid: int, umask: int) -> SquashedRoot:
    return SquashedRoot(NOBODY, NOBODY, pid, umask)


_TRIM_BATCH = 4096


# What a backing call's result creates, for Offloader (the descriptors to close if abandoned).
def first_fd(made: tuple[int, os.stat_result]) -> tuple[int]:
    return (made[0],)


def the_fd(fd: int) -> tuple[int]:
    return (fd,)


def two_fds(made: tuple[int, int, os.stat_result]) -> tuple[int, int]:
    return (made[0], made[1])


def check_name(name: bytes) -> None:
    """Single-component names only: `.` and `..` are never looked up on a source (SPEC 1)."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise OSError(errno.ENOENT, "refused name")


class Steps:
    """Collaborators and shared steps of every subtree handler: one per view, the base of
    SubtreeOps and the context its xattr and range parts are built on."""

    def __init__(self, ctx: ViewContext, registry: Registry, offloader: Offloader) -> None:
        self.ctx = ctx
        self.inodes = ctx.inodes
        self.handles = ctx.handles
        self.callers = ctx.callers
        self.registry = registry
        self.offloader = offloader
        self.entry_timeout = ctx.config.cache.entry_timeout
        self.attr_timeout = ctx.config.cache.attr_timeout
        # fn(*fds, *args) inline or offloaded (Offloader.run): bound once, one call per request.
        self._io = self.offloader.run

    # --- who may do what ---------------------------------------------------------------

    def _enter(self, ctx: RequestContext, node: Node, *, write: bool = False,
               groups: bool = False, new_names: bool = False) -> Caller:
        """Check the caller may use node's subtree; return the caller the backing sees.

        EACCES for a caller without access (the kernel may have cached the path for others),
        EROFS for a modification under read-only access, ENOENT once the subtree is detached
        and the request would reach a new name (new lookups fail, open files keep working).
        """
        subtree = node.subtree
        if new_names and not subtree.live:
            raise OSError(errno.ENOENT, "subtree detached")
        caller = self.callers.from_ctx(ctx)
        access = self.ctx.access(caller, subtree.spec)
        if access is Access.NONE:
            raise OSError(errno.EACCES, "no access to subtree")
        if write and access is not Access.RW:
            raise OSError(errno.EROFS, "read-only access")
        subtree.last_access = self.ctx.now()
        subtree.requests += 1
        if caller.uid == 0 and subtree.spec.policy.squash_root:
            return squashed_root(caller.pid, caller.umask)
        if groups:
            return self.callers.with_groups(caller)
        return caller

    def _charged(self, ctx: RequestContext) -> int | None:
        """The uid whose max_open_files_per_user a new handle counts against,
        and whose worker-thread slots its blocking calls take; None for an
        admin, who is not capped per user and may use the slots kept for admins (SPEC 6)."""
        if ctx.uid == 0:
            return None
        return None if self.ctx.is_admin(self.callers.from_ctx(ctx)) else ctx.uid

    def _timeouts(self, subtree: LiveSubtree) -> tuple[float, float]:
        """(entry, attribute) timeouts of the entries of subtree the kernel is given."""
        if subtree.spec.policy.squash_root:
            # The kernel lets root through cached entries by capability: on a squashed
            # subtree nothing is cached, so every walk step comes back as a lookup that
            # runs as nobody (ops.lookup), as a native walk by nobody would be checked.
            return 0.0, 0.0
        return self.entry_timeout, self.attr_timeout

    def _attrs(self, node: Node, st: os.stat_result) -> EntryAttributes:
        if node.is_root:
            attrs = self.ctx.root_attrs(node.subtree, node.ino, st)
        else:
            attrs = fill(EntryAttributes(), node.ino, st, *self._timeouts(node.subtree))
        attrs.generation = node.generation  # a recycled st_ino's new object (inodes.py)
        return attrs

    def _is_gate(self, node: Node) -> bool:
        """Whether node is VIEW/NAME presented as a gate, whose attributes are not the
        source root's: the kernel judged the request against the gate, not the source."""
        return node.is_root and self.ctx.gated

    def _node(self, ino: int) -> Node:
        return self.inodes.node(ino)

    def _trim(self) -> None:
        """Over budget (max_inodes, or too many descriptors that cannot be evicted): ask the
        kernel to drop its coldest entries, so it forgets them.

        Called after new objects and once a second by the daemon's housekeeping. Each call
        looks at only a few nodes more than it invalidates (InodeTable.cold_entries).
        """
        if not self.inodes.over_budget() or not self.ctx.mounted:
            return
        for parent, name in self.inodes.cold_entries(_TRIM_BATCH):
            pyfuse3.invalidate_entry_async(InodeT(parent), FileNameT(name), ignore_enoent=True)

    def housekeeping(self) -> None:
        """Once a second: keep the inode table within its cap even when no lookup comes."""
        self._trim()

    async def _parent_for_change(self, parent_inode: int, name: bytes, ctx: RequestContext,
                                 ) -> tuple[Node, Caller]:
        check_name(name)
        parent = self._node(parent_inode)
        caller = self._enter(ctx, parent, write=True, groups=True, new_names=True)
        if self._is_gate(parent):
            # The kernel checked write and search against the gate; entries directly in
            # VIEW/NAME are still the source root's to allow (SPEC 5), as the caller.
            allowed = await self._io(parent.subtree, backing.access, (self.inodes.fd(parent),),
                                     os.W_OK | os.X_OK, caller)
            if not allowed:
                raise OSError(errno.EACCES, "the source root does not let the caller change it")
        return parent, caller

    def _adopt(self, parent: Node, name: bytes,
               made: tuple[int, os.stat_result]) -> EntryAttributes:
        fd, st = made
        node = self.inodes.adopt(parent.subtree, fd, st.st_dev, st.st_ino, parent.ino, name)
        self._trim()
        return self._attrs(node, st)

