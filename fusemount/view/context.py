"""The one context object the view's collaborators share: tables, rules, live subtrees.

It is also what control decides commands by (control/publisher.py's Context); subtrees
enter and leave `live` only through view/registry.py.

Built once by the daemon and passed down (STYLE: one context object, no module globals).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3

from fusemount.core.policy import Gate, Rules, access_of, gate_of, needs_groups
from fusemount.core.records import Access, Caller, Config, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable
from fusemount.host.sources import ViewGuard
from fusemount.view.attrs import fill, gated
from fusemount.view.callers import Callers
from fusemount.view.handles import HandleTable
from fusemount.view.inodes import InodeTable
from fusemount.view.live import LiveSubtree


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

    def with_groups(self, caller: Caller) -> Caller:
        return self.callers.with_groups(caller)

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
