"""RequestContext -> Caller (uid, gid, supplementary groups, umask). SPEC 5.

FUSE tells the daemon only uid, gid, pid and umask. Supplementary groups come from
/proc/PID/status, which costs a file read, so they are read only when a decision needs
them and kept for one second per (pid, uid, gid): a process that drops a group is
judged by its new groups at most a second later. Root needs no groups at all.
"""

from __future__ import annotations

import time

import pyfuse3

from fusemount.core.records import Caller

_TTL_S = 1.0
_MAX_CACHED = 4096


def read_groups(pid: int) -> frozenset[int]:
    """Supplementary groups of a process; empty if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line[7:].split())
    except (OSError, ValueError):
        pass
    return frozenset()


class Callers:
    """Builds Caller records; caches group lists briefly (bounded, see module docstring)."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, int, int], tuple[float, frozenset[int]]] = {}

    def from_ctx(self, ctx: pyfuse3.RequestContext) -> Caller:
        """A caller without supplementary groups (cheap: most decisions need none)."""
        return Caller(ctx.uid, ctx.gid, ctx.pid, ctx.umask)

    def with_groups(self, caller: Caller) -> Caller:
        """The same caller with its supplementary groups filled in."""
        if caller.uid == 0 or caller.groups:
            return caller
        key = (caller.pid, caller.uid, caller.gid)
        now = time.monotonic()
        hit = self._groups.get(key)
        if hit is not None and now - hit[0] < _TTL_S:
            groups = hit[1]
        else:
            groups = read_groups(caller.pid)
            if len(self._groups) >= _MAX_CACHED:
                self._groups.clear()
            self._groups[key] = (now, groups)
        return Caller(caller.uid, caller.gid, caller.pid, caller.umask, groups)

    def full(self, ctx: pyfuse3.RequestContext) -> Caller:
        return self.with_groups(self.from_ctx(ctx))
