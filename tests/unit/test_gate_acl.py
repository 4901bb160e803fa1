"""core.policy.gate_of: the bits and access ACL of a subtree's gate (SPEC 5, gate mode).

The ACL is checked by decoding it and replaying the kernel's posix_acl_permission() for a
set of callers, so the test states who gets in, not which bytes come out.
"""

from __future__ import annotations

import struct

import pytest

from fusemount.core.policy import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    Admins,
    Gate,
    access_of,
    gate_of,
)
from fusemount.core.records import Access, Caller, Grant, GrantKind, Policy

OWNER, BOB, CAROL, DAVE = 1001, 1002, 1003, 1004
TEAM, ADMINS, SRC_GROUP, OTHER_GROUP = 2001, 2002, 2003, 2004
NO_ADMINS = Admins(frozenset(), frozenset())
GROUP_ADMINS = Admins(frozenset({DAVE}), frozenset({ADMINS}))


def _decode(blob: bytes) -> list[tuple[int, int, int]]:
    assert struct.unpack_from("<I", blob)[0] == 2
    body = blob[4:]
    assert len(body) % 8 == 0
    return [struct.unpack_from("<HHI", body, i) for i in range(0, len(body), 8)]


def _kernel_may_enter(gate: Gate, owner: int, group: int, caller: Caller) -> bool:
    """fs/namei.c acl_permission_check + fs/posix_acl.c posix_acl_permission, for rwx."""
    want = 0o7
    mode = gate.mode
    if caller.uid == owner:
        return mode >> 6 & want == want
    if gate.acl is not None and mode & 0o070:
        entries = _decode(gate.acl)
        mask = next(perm for tag, perm, _ in entries if tag == ACL_MASK)
        found = False
        for tag, perm, ident in entries:
            if tag == ACL_USER and ident == caller.uid:
                return perm & mask & want == want
            if tag in (ACL_GROUP_OBJ, ACL_GROUP):
                gid = group if tag == ACL_GROUP_OBJ else ident
                if caller.in_group(gid):
                    if perm & mask & want == want:
                        return True
                    found = True
        if found:
            return False
        other = next(perm for tag, perm, _ in entries if tag == ACL_OTHER)
        return other & want == want
    if caller.in_group(group):
        return mode >> 3 & want == want
    return mode & want == want


def _valid_order(entries: list[tuple[int, int, int]]) -> bool:
    """posix_acl_valid(): tags ascending, named ids ascending and unique, mask present."""
    keys = [(tag, ident if tag in (ACL_USER, ACL_GROUP) else 0) for tag, _, ident in entries]
    tags = [tag for tag, _, _ in entries]
    return (keys == sorted(set(keys)) and tags.count(ACL_USER_OBJ) == 1
            and tags.count(ACL_GROUP_OBJ) == 1 and tags.count(ACL_OTHER) == 1
            and tags.count(ACL_MASK) == 1)


CALLERS = {
    "owner": Caller(OWNER, 100, 1),
    "bob": Caller(BOB, 100, 1),
    "carol": Caller(CAROL, 100, 1),
    "dave": Caller(DAVE, 100, 1),
    "team member": Caller(CAROL, 100, 1, groups=frozenset({TEAM})),
    "admin by group": Caller(CAROL, 100, 1, groups=frozenset({ADMINS})),
    "source group": Caller(CAROL, SRC_GROUP, 1),
    "source group + team": Caller(CAROL, SRC_GROUP, 1, groups=frozenset({TEAM})),
    "other group": Caller(CAROL, OTHER_GROUP, 1),
}

POLICIES = {
    "owner only": Policy(OWNER),
    "user ro": Policy(OWNER, (Grant(GrantKind.USER, BOB, Access.RO),)),
    "group rw": Policy(OWNER, (Grant(GrantKind.GROUP, TEAM, Access.RW),)),
    "source group": Policy(OWNER, (Grant(GrantKind.GROUP, SRC_GROUP, Access.RO),)),
    "everyone": Policy(OWNER, (Grant(GrantKind.EVERYONE, 0, Access.RO),)),
    "mixed": Policy(OWNER, (Grant(GrantKind.USER, BOB, Access.RW),
                            Grant(GrantKind.GROUP, TEAM, Access.RO),
                            Grant(GrantKind.USER, OWNER, Access.RO))),
    "read-only subtree": Policy(OWNER, (Grant(GrantKind.USER, BOB, Access.RW),), ro=True),
}


@pytest.mark.parametrize("admins", [NO_ADMINS, GROUP_ADMINS], ids=["no admins", "admins"])
@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_gate_lets_in_exactly_who_the_policy_lets_in(admins: Admins, policy_name: str) -> None:
    policy = POLICIES[policy_name]
    gate = gate_of(policy, admins)
    # Whatever group the source root has (it may be chgrp'ed while the kernel keeps the ACL).
    for group in (SRC_GROUP, TEAM, ADMINS, OTHER_GROUP):
        for who, caller in CALLERS.items():
            expected = access_of(caller, policy, admins.include(caller)) is not Access.NONE
            got = _kernel_may_enter(gate, policy.owner, group, caller)
            assert got == expected, \
                f"{policy_name}, group {group}: {who} enters={got}, policy says {expected}"


@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_gate_acl_is_valid_for_the_kernel_and_mode_group_bits_are_its_mask(
    policy_name: str,
) -> None:
    gate = gate_of(POLICIES[policy_name], GROUP_ADMINS)
    assert gate.mode & ~0o777 == 0
    if gate.acl is None:
        return
    entries = _decode(gate.acl)
    assert _valid_order(entries), entries
    mask = next(perm for tag, perm, _ in entries if tag == ACL_MASK)
    assert gate.mode >> 3 & 0o7 == mask


def test_gate_without_named_principals_needs_no_acl_and_shuts_the_source_group_out() -> None:
    gate = gate_of(Policy(OWNER), NO_ADMINS)
    assert (gate.mode, gate.acl) == (0o700, None)


def test_gate_for_everyone_is_open_bits_without_acl() -> None:
    gate = gate_of(POLICIES["everyone"], GROUP_ADMINS)
    assert (gate.mode, gate.acl) == (0o777, None)


def test_gate_named_entries_leave_out_root_and_the_owner() -> None:
    admins = Admins(frozenset({0, OWNER, DAVE}), frozenset({ADMINS}))
    gate = gate_of(Policy(OWNER, (Grant(GrantKind.USER, BOB, Access.RO),)), admins)
    assert gate.users == (BOB, DAVE)
    assert gate.groups == (ADMINS,)
    assert gate.group_obj == 0
    assert gate.acl is not None
    assert (ACL_GROUP_OBJ, 0, 0xFFFFFFFF) in _decode(gate.acl)
