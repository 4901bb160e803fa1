"""The one context object the view's collaborators share: tables, rules, live subtrees.

Built once by the daemon and passed down (STYLE: one context object, no module globals).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from fusemount.core.policy import Gate, Rules, access_of, gate_of, needs_groups
from fusemount.core.records import Access, Caller, Config, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable
from fusemount.host.sources import ViewGuard
from fusemount.view.attrs import fill, gated
from fusemount.view.callers import Callers
from fusemount.view.handles import HandleTable
from fusemount.view.inodes import InodeTable
from fusemount.view.live import LiveSubtree

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ViewContext:
    config: Config
    rules: Rules
    table: SubtreeTable
    inodes: InodeTable
    handles: HandleTable
    callers: Callers = field(default_factory=Callers)
    live: dict[str, LiveSubtree] = field(default_factory=dict)  # attached, by name
    start_ns: int = field(default_factory=time.time_ns)
    now: Callable[[], float] = time.monotonic
    mounted: bool = False  # notify calls are only possible once the view is mounted
    view_guard: ViewGuard | None = None  # sources must neither contain nor lie in the view

    def access(self, caller: Caller, spec: SubtreeSpec) -> Access:
        """What caller may do in a subtree (SPEC 5). Reads groups only when they matter."""
        policy = spec.policy
        if caller.uid == 0 or caller.uid == policy.owner:
            return Access.RO if policy.ro else Access.RW
        if needs_groups(policy, self.rules.admins):
            caller = self.callers.with_groups(caller)
        return access_of(caller, policy, self.rules.is_admin(caller))

    @property
    def gated(self) -> bool:
        """Gate mode (SPEC 5): VIEW/NAME presents the gate and the kernel keeps outsiders out."""
        return not self.config.access.hide_names

    def gate(self, subtree: LiveSubtree) -> Gate:
        return gate_of(subtree.spec.policy, self.rules.admins)

    def root_attrs(self, subtree: LiveSubtree, ino: int,
                   root_st: os.stat_result) -> pyfuse3.EntryAttributes:
        """What VIEW/NAME shows: the gate, cached like any entry; or, with hidden names, the
        source root's own attributes with entry_timeout 0, so that every walk through the
        root asks the daemon, as its caller, whether the name exists for them."""
        cache = self.config.cache
        if not self.gated:
            return fill(pyfuse3.EntryAttributes(), ino, root_st, 0.0, cache.attr_timeout)
        return gated(ino, root_st, self.gate(subtree).mode, subtree.spec.policy.owner,
                     cache.entry_timeout, cache.attr_timeout)

    def is_admin(self, caller: Caller) -> bool:
        if caller.uid == 0:
            return True
        return self.rules.is_admin(self.callers.with_groups(caller))

    def visible(self, caller: Caller) -> list[LiveSubtree]:
        return [s for s in sorted(self.live.values(), key=lambda s: s.name)
                if self.access(caller, s.spec) is not Access.NONE]

    def statfs(self, caller: Caller) -> pyfuse3.StatvfsData:
        """statfs of the view root and `.fusemount` (README "statfs"): the sum over the
        distinct filesystems the caller can see, in 4 KiB units, like a union filesystem.
        Under a subtree the source's own filesystem answers (RangeOps.statfs_inode)."""
        out = pyfuse3.StatvfsData()
        unit = 4096
        seen: set[int] = set()
        blocks = bfree = bavail = files = ffree = 0
        for subtree in self.visible(caller):
            if subtree.source is None or subtree.stalled_since is not None:
                continue
            try:
                st = os.fstatvfs(subtree.source.root_fd)
            except OSError:
                continue
            if st.f_fsid in seen:
                continue
            seen.add(st.f_fsid)
            blocks += st.f_blocks * st.f_frsize // unit
            bfree += st.f_bfree * st.f_frsize // unit
            bavail += st.f_bavail * st.f_frsize // unit
            files += st.f_files
            ffree += st.f_ffree
        out.f_bsize = out.f_frsize = unit
        out.f_blocks, out.f_bfree, out.f_bavail = blocks, bfree, bavail
        out.f_files, out.f_ffree, out.f_favail = files, ffree, ffree
        out.f_namemax = 255
        return out

    def reap(self) -> None:
        """Close the sources of force-detached subtrees whose last open file is gone."""
        while self.handles.on_last_close:
            subtree = self.handles.on_last_close.pop()
            self.inodes.drop_subtree(subtree)
            subtree.close()
            log.info("subtree %s: last open file closed, source released", subtree.name)

    async def invalidate(self, subtree: LiveSubtree) -> None:
        """Make the kernel forget what it cached for a subtree (policy change or detach).

        Attributes of every inode (for the gate, its ACL too: invalidate_inode drops the
        cached ACL), so the next permission check asks again. The name itself only when it
        may no longer resolve: a detach, or hidden names; a `set` in gate mode keeps the
        entry, so working directories inside stay valid (dropping a directory's dentry
        unhashes it under every process whose cwd it is).

        The notify calls block until the kernel has processed them, and the kernel may need
        an answer from us to do so: they run in a worker thread while trio keeps serving.
        """
        if not self.mounted:
            return
        inos = [n.ino for n in self.inodes.nodes_of(subtree)]
        drop_name = not (subtree.live and self.gated)

        name = pyfuse3.FileNameT(subtree.name.encode())

        def run() -> None:
            # Synchronous, so the name is gone from the kernel's cache before the command
            # replies, and no queued notification can outlive the session at shutdown.
            try:
                if drop_name:
                    pyfuse3.invalidate_entry(pyfuse3.ROOT_INODE, name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("invalidate_entry(%s): %s", subtree.name, exc)
            for ino in inos:
                try:
                    pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=False)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # ENOENT: the kernel had already forgotten
                        log.warning("invalidate_inode(%d): %s", ino, exc)

        await trio.to_thread.run_sync(run)
