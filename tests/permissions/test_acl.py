"""POSIX ACLs on the backing files apply through the view as natively (SPEC 5).

A 0600 file of alice's with an ACL entry granting carol read: carol reads it natively and
through the view; its twin without the ACL she cannot read either way. The ACL is set with
setfacl when the `acl` package is installed, else written as the binary
system.posix_acl_access xattr the kernel stores.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.permissions import config, make_dir, make_file, probe
from tests.support.users import Users

pytestmark = pytest.mark.needs_root

# linux/posix_acl_xattr.h
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_READ = 4


def grant_read(path: Path, name: str, ident: int, is_group: bool = False) -> None:
    """Add `u:NAME:r` (or `g:NAME:r`) to path's access ACL; owner rw, group and other none."""
    if shutil.which("setfacl") is not None:
        subprocess.run(
            ["setfacl", "-m", f"{'g' if is_group else 'u'}:{name}:r", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return
    entries = [  # sorted by tag, then id, as the kernel requires
        (_USER_OBJ, 6, _UNDEFINED_ID),
        (_GROUP_OBJ, 0, _UNDEFINED_ID),
        (_GROUP if is_group else _USER, _READ, ident),
        (_MASK, _READ, _UNDEFINED_ID),
        (_OTHER, 0, _UNDEFINED_ID),
    ]
    entries.sort(key=lambda e: (e[0], e[2]))
    value = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, i) for tag, perm, i in entries
    )
    os.setxattr(path, "system.posix_acl_access", value)


@pytest.mark.timeout(60)
def test_acl_user_entry_lets_carol_read_natively_and_through_view(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    alice, carol = users.alice, users.carol
    src = make_dir(source / "src", 0o755, alice.uid, alice.gid)
    granted = make_file(src / "granted", 0o600, alice.uid, alice.gid, text="for carol\n")
    make_file(src / "plain", 0o600, alice.uid, alice.gid, text="not for carol\n")
    grant_read(granted, carol.name, carol.uid)
    assert os.getxattr(granted, "system.posix_acl_access")  # the ACL is really there

    view = view_factory(config_text=config())
    view.ok(f"attach acl {src} owner={alice.name} allow={carol.name}:rw")
    inside = view.path / "acl"
    ops = {}
    for where, base in (("native", src), ("view", inside)):
        for name in ("granted", "plain"):
            ops[f"{where}.{name}.read"] = f"read_file({str(base / name)!r})"
            ops[f"{where}.{name}.write"] = f"append_file({str(base / name)!r})"
    got = probe(carol, ops)
    expected = {
        "native.granted.read": 0,
        "native.granted.write": "EACCES",
        "native.plain.read": "EACCES",
        "native.plain.write": "EACCES",
    }
    expected |= {k.replace("native.", "view.", 1): v for k, v in expected.items()}
    assert got == expected
    # bob, in no ACL entry and not the owner, gets nothing either way.
    bob_ops = {f"{w}.granted.read": f"read_file({str(b / 'granted')!r})"
               for w, b in (("native", src), ("view", inside))}
    view.ok(f"set acl allow={carol.name}:rw,{users.bob.name}:rw")
    assert probe(users.bob, bob_ops) == dict.fromkeys(bob_ops, "EACCES")



@pytest.mark.timeout(60)
def test_acl_group_entry_lets_team_member_read_natively_and_through_view(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """bob reads a 0600 file of alice's through `g:fmt_team:r`, a supplementary group of his:
    the view must judge him with all his groups, as the kernel does natively."""
    alice, bob, carol = users.alice, users.bob, users.carol
    src = make_dir(source / "src", 0o755, alice.uid, alice.gid)
    granted = make_file(src / "granted", 0o600, alice.uid, alice.gid, text="for the team\n")
    grant_read(granted, users.team.name, users.team.gid, is_group=True)
    view = view_factory(config_text=config())
    view.ok(f"attach acl {src} owner={alice.name} allow={bob.name}:rw,{carol.name}:rw")
    ops = {w: f"read_file({str(b / 'granted')!r})" for w, b in (("native", src),
                                                                 ("view", view.path / "acl"))}
    assert probe(bob, ops) == {"native": 0, "view": 0}
    assert probe(carol, ops) == {"native": "EACCES", "view": "EACCES"}
