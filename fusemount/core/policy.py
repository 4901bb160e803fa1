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


# --- the gate (SPEC 5, access.hide_names = false) ---------------------------------------

# POSIX ACL xattr layout (linux/posix_acl_xattr.h): a version word, then entries
# {u16 tag, u16 perm, u32 id} sorted by tag, named entries by id, as the kernel requires.
ACL_XATTR_VERSION = 2
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_RWX = 0o7


@dataclass(frozen=True, slots=True)
class Gate:
    """What VIEW/NAME presents in gate mode: permission bits and the access ACL.

    acl is the system.posix_acl_access value, or None when the bits say everything (the
    kernel then gets ENODATA). Every entry is rwx: the ro/rw split is the daemon's EROFS,
    and the kernel must let an `:ro` grantee's write through to get it.
    """

    mode: int
    acl: bytes | None
    users: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    group_obj: int = 0
    other: int = 0


def gate_of(policy: Policy, admins: Admins) -> Gate:
    """The gate letting in exactly root (by capability), the admins, the owner and the
    allowed principals of policy.

    The owning group's entry (group_obj, which follows whatever group the source root has
    now, while the kernel keeps the ACL until it is invalidated) is always `---` unless
    everyone is let in: an allowed group gets its own named entry, which the kernel honours
    for members of the owning group too, so a chgrp of the source root never lets anyone in.
    """
    if any(g.kind is GrantKind.EVERYONE for g in policy.grants):
        # Everyone is let in, the owning group included: a `---` group_obj would shut its
        # members out (the kernel stops at a matching group entry without the permission).
        return Gate(0o777, None, group_obj=_RWX, other=_RWX)
    users = set(admins.uids)
    groups = set(admins.gids)
    for grant in policy.grants:
        (users if grant.kind is GrantKind.USER else groups).add(grant.id)
    users -= {0, policy.owner}  # root passes by capability, the owner through user_obj
    named_users, named_groups = tuple(sorted(users)), tuple(sorted(groups))
    if not named_users and not named_groups:
        # A minimal ACL: the mode says it all, so the kernel never needs the xattr.
        return Gate(0o700, None)
    entries = [(ACL_USER_OBJ, _RWX, ACL_UNDEFINED_ID)]
    entries += [(ACL_USER, _RWX, uid) for uid in named_users]
    entries.append((ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID))
    entries += [(ACL_GROUP, _RWX, gid) for gid in named_groups]
    entries += [(ACL_MASK, _RWX, ACL_UNDEFINED_ID), (ACL_OTHER, 0, ACL_UNDEFINED_ID)]
    blob = ACL_XATTR_VERSION.to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
        for tag, perm, ident in entries
    )
    # With an ACL the group bits are the mask: rwx, so the kernel consults the ACL.
    return Gate(0o770, blob, named_users, named_groups)
