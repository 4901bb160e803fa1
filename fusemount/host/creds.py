"""Perform one call as the caller (SPEC 5: files are created as the caller).

How this works: the daemon runs as root with the kernel checking permissions
(`default_permissions`). Calls that create or change backing objects run with the
thread's filesystem credentials switched to the caller's uid, gid and supplementary
groups, so the backing filesystem itself decides exactly as it would natively
(setgid directories, sticky bits, ACL inheritance, quota) and every new object is
owned by the caller from its first instant: there is no create-as-root-then-chown gap.

setfsuid/setfsgid and the raw setgroups syscall change only the calling thread (glibc's
setgroups would broadcast to every thread). The switch and its restore happen with no
`await` in between, so no other trio task ever runs with borrowed credentials.
Known gap: supplementary groups come from /proc/PID/status, read when the request
arrives; a process that changes its groups concurrently is judged by one of the two sets.
"""

from __future__ import annotations

import os
from types import TracebackType

from fusemount.core.records import Caller
from fusemount.host import syscalls

_BASE_GROUPS: tuple[int, ...] = tuple(os.getgroups())


def is_privileged(caller: Caller) -> bool:
    """uid 0 keeps the daemon's own credentials: nothing to switch."""
    return caller.uid == 0 and caller.gid == 0


class as_caller:
    """Context manager switching this thread's fs credentials to the caller's."""

    __slots__ = ("_caller", "_switched")

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._switched = False

    def __enter__(self) -> None:
        caller = self._caller
        if is_privileged(caller):
            return
        # Order matters: groups and gid first, while fsuid 0 still has the right to change them.
        syscalls.setgroups_thread(sorted(caller.groups | {caller.gid}))
        syscalls.setfsgid(caller.gid)
        syscalls.setfsuid(caller.uid)
        self._switched = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._switched:
            return
        syscalls.setfsuid(0)
        syscalls.setfsgid(0)
        syscalls.setgroups_thread(_BASE_GROUPS)
        # setfsuid never reports failure; a thread left with borrowed credentials would act
        # for the wrong user on every later call, so check loudly.
        assert syscalls.setfsuid(-1) == 0, "fsuid not restored"
