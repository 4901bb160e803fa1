"""Perform one call as the caller (SPEC 5: files are created as the caller).

How this works: the daemon runs as root with the kernel checking permissions
(`default_permissions`). Calls that create or change backing objects run with the
thread's filesystem credentials switched to the caller's uid, gid and supplementary
groups, so the backing filesystem itself decides exactly as it would natively
(setgid directories, sticky bits, ACL inheritance, quota) and every new object is
owned by the caller from its first instant: there is no create-as-root-then-chown gap.

setfsuid/setfsgid and the raw setgroups syscall change only the calling thread (glibc's
setgroups would broadcast to every thread). A non-zero fsuid makes the kernel drop the
filesystem capabilities (DAC_OVERRIDE, FOWNER, MKNOD, ...) from the thread, but not
CAP_SYS_RESOURCE, which lets ext4 hand out root-reserved blocks and ignores disk quotas
(SPEC 6: writes spend the caller's allowance). So the switch also drops CAP_SYS_RESOURCE
from the thread's effective set with the raw capset syscall (per thread too), before the
fsuid changes, and raises it again after fsuid is back to 0: capset would otherwise put
the filesystem capabilities back while fsuid is the caller's. The switch and its restore
happen with no `await` in between, so no other trio task ever runs with borrowed credentials.
Known gap: supplementary groups come from /proc/PID/status, read when the request
arrives; a process that changes its groups concurrently is judged by one of the two sets.
"""

from __future__ import annotations

import os
from types import TracebackType

from fusemount.core.records import Caller
from fusemount.host import syscalls

_BASE_GROUPS: tuple[int, ...] = tuple(os.getgroups())
_REAL_ROOT = os.getuid() == 0
_BASE_CAPS: syscalls.CapSets = syscalls.capget()
_RESOURCE = 1 << syscalls.CAP_SYS_RESOURCE
# None when the daemon runs without CAP_SYS_RESOURCE anyway: then there is nothing to drop.
_SPENDING: syscalls.CapSets | None = (
    syscalls.CapSets(_BASE_CAPS.effective & ~_RESOURCE, _BASE_CAPS.permitted,
                     _BASE_CAPS.inheritable)
    if _BASE_CAPS.effective & _RESOURCE else None
)


def is_privileged(caller: Caller) -> bool:
    """uid 0 keeps the daemon's own credentials: nothing to switch."""
    return caller.uid == 0 and caller.gid == 0


class as_caller:
    """Context manager switching this thread's fs credentials to the caller's."""

    __slots__ = ("_caller", "_dropped", "_switched")

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._switched = False
        self._dropped = False

    def __enter__(self) -> None:
        caller = self._caller
        if is_privileged(caller):
            return
        self._switched = True  # from here on, __exit__ restores whatever was changed
        # Order matters: capabilities, groups and gid first, while fsuid 0 still has the
        # right to change them.
        if _SPENDING is not None and caller.uid != 0:
            syscalls.capset(_SPENDING)
            self._dropped = True
        syscalls.setgroups_thread(sorted(caller.groups | {caller.gid}))
        syscalls.setfsgid(caller.gid)
        syscalls.setfsuid(caller.uid)

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
        if self._dropped:
            syscalls.capset(_BASE_CAPS)
        # setfsuid never reports failure; a thread left with borrowed credentials would act
        # for the wrong user on every later call, so check loudly. The kernel always lets
        # a thread whose real uid is 0 set fsuid 0, so the restore cannot have been ignored
        # when _REAL_ROOT; otherwise ask (one more credential commit per call).
        if not _REAL_ROOT:
            assert syscalls.setfsuid(-1) == 0, "fsuid not restored"

