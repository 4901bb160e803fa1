"""Who may do what (SPEC 5). Pure decisions on records: no os, pyfuse3 or trio here.

Every refusal is a ControlError (control plane) or an OSError with the errno the SPEC
names (data plane); callers never see a boolean they could forget to check.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from fusemount.core.records import (
    Access,
    AccessConfig,
    Caller,
    ControlError,
    GrantKind,
    Policy,
)


@dataclass(frozen=True, slots=True)
class Admins:
    """`access.admins` resolved to numbers once at start; uid 0 is always an admin."""

    uids: frozenset[int]
    gids: frozenset[int]

    def include(self, caller: Caller) -> bool:
        if caller.uid == 0 or caller.uid in self.uids:
            return True
        return any(caller.in_group(g) for g in self.gids)


@dataclass(frozen=True, slots=True)
class Rules:
    """The control-plane rules: admins, self service (SPEC 5)."""

    admins: Admins
    access: AccessConfig

    def is_admin(self, caller: Caller) -> bool:
        return self.admins.include(caller)

    def require_admin(self, caller: Caller, what: str, errno_: int = errno.EACCES) -> None:
        if not self.is_admin(caller):
            raise ControlError(errno_, f"{what}: only admins may do this")

    def require_self_service(self, caller: Caller, what: str) -> None:
        """Non-admins act only through self service; admins always pass."""
        if self.is_admin(caller):
            return
        if not self.access.self_service:
            raise ControlError(errno.EACCES, f"{what}: only admins may do this "
                                             "(access.self_service is off)")


def access_of(caller: Caller, policy: Policy, is_admin: bool) -> Access:
    """The widest access any rule gives the caller, capped at RO for a read-only subtree."""
    if is_admin or caller.uid == policy.owner:
        best = Access.RW
    else:
        best = Access.NONE
        for grant in policy.grants:
            if grant.access <= best:
                continue
            if (
                grant.kind is GrantKind.EVERYONE
                or (grant.kind is GrantKind.USER and grant.id == caller.uid)
                or (grant.kind is GrantKind.GROUP and caller.in_group(grant.id))
            ):
                best = grant.access
    if policy.ro and best is Access.RW:
        return Access.RO
    return best


def needs_groups(policy: Policy, admins: Admins) -> bool:
    """Whether deciding access may depend on supplementary groups (they cost a /proc read)."""
    return bool(admins.gids) or any(g.kind is GrantKind.GROUP for g in policy.grants)
