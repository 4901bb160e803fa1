"""User and group names <-> numbers (owner=, allow=, access.admins). SPEC 4, 5, 7.

The only module that reads the user database; core/ sees numbers only.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd

from fusemount.core.policy import Admins
from fusemount.core.records import (
    Access,
    Caller,
    ControlError,
    Grant,
    GrantKind,
    GrantSpec,
)

log = logging.getLogger(__name__)


def login_caller(uid: int) -> Caller:
    """uid as a login presents them (primary gid and groups from the user and group
    databases): a restart has no request to take them from, and the source walk checks
    search permission as this caller."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Caller(uid, uid, 0)
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid)) - {entry.pw_gid}
    return Caller(uid, entry.pw_gid, 0, groups=groups)


def uid_of(word: str) -> int:
    if word.isdigit():
        return int(word)
    try:
        return pwd.getpwnam(word).pw_uid
    except KeyError:
        raise ControlError(errno.EINVAL, f"unknown user {word!r}") from None


def gid_of(word: str) -> int:
    if word.isdigit():
        return int(word)
    try:
        return grp.getgrnam(word).gr_gid
    except KeyError:
        raise ControlError(errno.EINVAL, f"unknown group {word!r}") from None


def grants_of(specs: tuple[GrantSpec, ...]) -> tuple[Grant, ...]:
    out: list[Grant] = []
    seen: set[tuple[GrantKind, int]] = set()
    for spec in specs:
        if spec.principal == "*":
            grant = Grant(GrantKind.EVERYONE, -1, Access.RO)
        elif spec.is_group:
            grant = Grant(GrantKind.GROUP, gid_of(spec.principal), spec.access)
        else:
            grant = Grant(GrantKind.USER, uid_of(spec.principal), spec.access)
        if (grant.kind, grant.id) in seen:
            raise ControlError(errno.EINVAL, f"principal listed twice in allow=: {spec.principal}")
        seen.add((grant.kind, grant.id))
        out.append(grant)
    return tuple(out)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def render_grant(grant: Grant) -> str:
    suffix = "ro" if grant.access is Access.RO else "rw"
    if grant.kind is GrantKind.EVERYONE:
        return f"*:{suffix}"
    if grant.kind is GrantKind.GROUP:
        return f"@{group_name(grant.id)}:{suffix}"
    return f"{user_name(grant.id)}:{suffix}"


def resolve_admins(words: tuple[str, ...]) -> Admins:
    """`access.admins` to numbers; names that do not exist are skipped with a note (the
    default names group `fusemount`, which a host need not have)."""
    uids: set[int] = set()
    gids: set[int] = set()
    for word in words:
        try:
            if word.startswith("@"):
                gids.add(gid_of(word[1:]))
            else:
                uids.add(uid_of(word))
        except ControlError:
            log.info("access.admins: %s does not exist on this host; ignored", word)
    return Admins(frozenset(uids), frozenset(gids))
