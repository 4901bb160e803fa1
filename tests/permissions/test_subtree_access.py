"""Subtree access by role on the data path, and what `mounts` shows each reader (SPEC 5).

Roles: root and dave (admins, dave only through `@fmt_admins`), the owner (alice), an `:ro`
grantee (bob), `@fmt_team:rw` grantees (alice, bob; carol is not in the team), `*:ro`
(everyone) and the outsider. The backing files are world-writable, so the subtree policy is
the only thing that can refuse.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import (
    ROOT,
    Outcome,
    config,
    dump,
    everyone,
    listdir_as,
    make_dir,
    make_file,
    probe,
    read_json_as,
    read_text_as,
)
from tests.support.users import User, Users

pytestmark = pytest.mark.needs_root

SUBTREES = ("owned", "team", "private", "pub")


def _expected_access(users: Users, user: User, subtree: str) -> str:
    """rw, ro or none: what SPEC 5 gives user in each subtree set up by _populated_view."""
    if user in (ROOT, users.dave):
        return "rw"  # admins: every subtree, read-write
    table = {
        "owned": {users.alice.name: "rw", users.bob.name: "ro"},
        "team": {users.alice.name: "rw", users.bob.name: "rw"},
        "private": {},
        "pub": {users.alice.name: "ro", users.bob.name: "ro", users.carol.name: "ro"},
    }
    return table[subtree].get(user.name, "none")


def _populated_view(view_factory: ViewFactory, source: Path, users: Users) -> ViewHandle:
    view = view_factory(config_text=config())
    allow = {
        "owned": f"owner={users.alice.name} allow={users.bob.name}:ro",
        "team": f"allow=@{users.team.name}:rw",
        "private": "",
        "pub": "allow=*:ro",
    }
    for name in SUBTREES:
        src = make_dir(source / name, 0o777)
        make_file(src / "data.txt", 0o666, text="hello\n")
        for user in everyone(users):  # per-user targets: one user's test never feeds another's
            make_file(src / f"v-{user.name}", 0o666)
            make_file(src / f"r-{user.name}", 0o666)
            make_file(src / f"c-{user.name}", 0o644, user.uid, user.gid)
        view.ok(f"attach {name} {src} {allow[name]}".rstrip())
    return view


def _data_ops(view: Path, subtree: str, user: User) -> dict[str, str]:
    top, data = str(view / subtree), str(view / subtree / "data.txt")
    new = str(view / subtree / f"new-{user.name}")
    victim, moved = (str(view / subtree / f"{p}-{user.name}") for p in ("v", "r"))
    mine = str(view / subtree / f"c-{user.name}")
    return {
        "stat": f"os.stat({top!r})",
        "listdir": f"os.listdir({top!r})",
        "read": f"read_file({data!r})",
        "write": f"append_file({data!r})",
        "create": f"create_file({new!r})",
        "mkdir": f"os.mkdir({new + '.d'!r})",
        "unlink": f"os.unlink({victim!r})",
        "rename": f"os.rename({moved!r}, {moved + '.moved'!r})",
        "chmod": f"os.chmod({mine!r}, 0o600)",
        "truncate": f"os.truncate({mine!r}, 0)",
        "setxattr": f"os.setxattr({mine!r}, 'user.fmt', b'1')",
    }


def _expected_outcomes(access: str) -> set[tuple[str, Outcome]]:
    reads = ("stat", "listdir", "read")
    writes = ("write", "create", "mkdir", "unlink", "rename", "chmod", "truncate", "setxattr")
    if access == "rw":
        return {(op, 0) for op in reads + writes}
    if access == "ro":
        return {(op, 0) for op in reads} | {(op, "EROFS") for op in writes}
    return set()  # checked separately: every operation refused as missing


@pytest.mark.timeout(90)
def test_subtree_access_by_role_matches_policy(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view = _populated_view(view_factory, source, users)
    problems: list[str] = []
    for user in everyone(users):
        ops: dict[str, str] = {}
        for subtree in SUBTREES:
            ops |= {f"{subtree}.{k}": v for k, v in _data_ops(view.path, subtree, user).items()}
        got = probe(user, ops)
        for subtree in SUBTREES:
            access = _expected_access(users, user, subtree)
            mine = {(k.split(".", 1)[1], v) for k, v in got.items() if k.startswith(subtree + ".")}
            if access == "none":
                # Gate mode (the default, SPEC 5): `stat VIEW/NAME` shows the gate to anyone,
                # and the kernel refuses everything past it. Never EROFS.
                wrong = {(op, v) for op, v in mine if (v == 0) != (op == "stat")
                         or v not in (0, "EACCES")}
            else:
                wrong = mine ^ _expected_outcomes(access)
            if wrong:
                problems.append(f"{user.name} in {subtree} ({access}): {sorted(mine, key=str)}")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
def test_subtree_access_root_listing_shows_only_accessible_subtrees(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view = _populated_view(view_factory, source, users)
    for user in everyone(users):
        expected = {s for s in SUBTREES if _expected_access(users, user, s) != "none"}
        listing = listdir_as(user, view.path)
        assert listing == sorted({".fusemount"} | expected), user.name


@pytest.mark.timeout(60)
def test_subtree_access_mounts_files_show_each_reader_only_what_they_may_access(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view = _populated_view(view_factory, source, users)
    control = view.path / ".fusemount"
    for user in everyone(users):
        expected = {s for s in SUBTREES if _expected_access(users, user, s) != "none"}
        records = read_json_as(user, control / "mounts.json")
        assert isinstance(records, list), f"{user.name} reading mounts.json: {records}"
        json_names = {r.get("name") for r in records if isinstance(r, dict)}
        assert json_names == expected, f"{user.name}: mounts.json shows\n{dump(records)}"
        text = read_text_as(user, control / "mounts")
        assert not text.startswith("!"), f"{user.name} reading mounts: {text}"
        text_names = {line.split()[0] for line in text.splitlines() if line.strip()}
        assert text_names == expected, f"{user.name}: mounts shows\n{text}"


@pytest.mark.timeout(60)
def test_subtree_access_owner_and_grants_follow_set_at_once(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """A grant taken away by `set allow=` is gone for the next request (SPEC 5)."""
    view = _populated_view(view_factory, source, users)
    data = str(view.path / "owned" / "data.txt")
    assert probe(users.bob, {"read": f"read_file({data!r})"}) == {"read": 0}
    view.ok("set owned allow=")
    got = probe(users.bob, {"read": f"read_file({data!r})"})
    assert got["read"] in ("ENOENT", "EACCES"), got
    # The owner keeps read-write whatever the grants say.
    assert probe(users.alice, {"write": f"append_file({data!r})"}) == {"write": 0}
    assert os.stat(source / "owned" / "data.txt").st_size > len("hello\n")
