"""The view grants no privilege the caller lacks natively (SPEC 3, 5).

alice, owner of her subtree and of the file, still cannot make a device node, give a file to
root, or hand it to a group she is not in; she can move it to a group she is in. Set-ID bits
follow native rules (tests/permissions/test_special_files.py); with
access.deny_special_files = true, set-ID bits and device nodes are refused even to root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import ROOT, config, make_dir, make_file, probe
from tests.support.users import Users

pytestmark = pytest.mark.needs_root


def _alice_view(view_factory: ViewFactory, source: Path, users: Users,
                extra: str = "") -> tuple[ViewHandle, Path]:
    alice = users.alice
    src = make_dir(source / "src", 0o755, alice.uid, alice.gid)
    view = view_factory(config_text=config(extra))
    view.ok(f"attach home {src} owner={alice.name}")
    return view, src


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("what", "expr_template"),
    [
        ("chown root", "os.chown({f!r}, 0, -1)"),
        ("chown root:root", "os.chown({f!r}, 0, 0)"),
        ("chgrp fmt_admins", "os.chown({f!r}, -1, {admins})"),
        ("mknod char device", "os.mknod({d!r} + '/null', stat.S_IFCHR | 0o666, os.makedev(1, 3))"),
        ("mknod block device", "os.mknod({d!r} + '/blk', stat.S_IFBLK | 0o666, os.makedev(7, 0))"),
    ],
)
def test_no_privilege_alice_is_refused_eperm(
    view_factory: ViewFactory, source: Path, users: Users, what: str, expr_template: str
) -> None:
    alice = users.alice
    view, src = _alice_view(view_factory, source, users)
    make_file(src / "mine", 0o644, alice.uid, alice.gid)
    expr = expr_template.format(
        f=str(view.path / "home" / "mine"), d=str(view.path / "home"), admins=users.admins.gid
    )
    assert probe(alice, {what: expr}) == {what: "EPERM"}
    st = os.lstat(src / "mine")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (alice.uid, alice.gid, 0o644)
    assert sorted(os.listdir(src)) == ["mine"]


@pytest.mark.timeout(60)
def test_no_privilege_alice_chgrp_to_her_own_group_works(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    alice = users.alice
    view, src = _alice_view(view_factory, source, users)
    make_file(src / "mine", 0o640, alice.uid, alice.gid)
    mine = str(view.path / "home" / "mine")
    got = probe(alice, {"chgrp": f"os.chown({mine!r}, -1, {users.team.gid})"})
    assert got == {"chgrp": 0}
    st = os.lstat(src / "mine")
    assert (st.st_uid, st.st_gid) == (alice.uid, users.team.gid)
    # and back to her primary group
    assert probe(alice, {"chgrp": f"os.chown({mine!r}, {alice.uid}, {alice.gid})"}) == {
        "chgrp": 0
    }
    assert os.lstat(src / "mine").st_gid == alice.gid


@pytest.mark.timeout(60)
def test_no_privilege_alice_may_chmod_plain_bits_and_setgid_directory(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """The refusals above are about privilege only: ordinary modes still change."""
    alice = users.alice
    view, src = _alice_view(view_factory, source, users)
    make_file(src / "mine", 0o644, alice.uid, alice.gid)
    make_dir(src / "shared", 0o775, alice.uid, users.team.gid)
    home = view.path / "home"
    got = probe(alice, {
        "file": f"os.chmod({str(home / 'mine')!r}, 0o600)",
        "dir": f"os.chmod({str(home / 'shared')!r}, 0o2770)",
    })
    assert got == {"file": 0, "dir": 0}
    assert stat.S_IMODE(os.lstat(src / "mine").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(src / "shared").st_mode) == 0o2770


@pytest.mark.timeout(60)
def test_no_privilege_root_cannot_make_devices_or_setid_files_with_deny_special_files(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, src = _alice_view(view_factory, source, users, "deny_special_files = true\n")
    make_file(src / "tool", 0o755)
    home = view.path / "home"
    got = probe(ROOT, {
        "chmod u+s": f"os.chmod({str(home / 'tool')!r}, 0o4755)",
        "chmod g+s": f"os.chmod({str(home / 'tool')!r}, 0o2755)",
        "create setuid": f"create_file({str(home / 'new')!r}, 0o4755)",
        "mknod char": f"os.mknod({str(home / 'null')!r}, stat.S_IFCHR | 0o666, os.makedev(1, 3))",
        "mknod block": f"os.mknod({str(home / 'blk')!r}, stat.S_IFBLK | 0o666, os.makedev(7, 0))",
    })
    # create with a set-ID mode: refused, or created without the bits; never with them.
    assert {k: v for k, v in got.items() if k != "create setuid"} == {
        "chmod u+s": "EPERM", "chmod g+s": "EPERM", "mknod char": "EPERM", "mknod block": "EPERM"
    }
    assert stat.S_IMODE(os.lstat(src / "tool").st_mode) == 0o755
    if (src / "new").exists():
        assert not os.lstat(src / "new").st_mode & (stat.S_ISUID | stat.S_ISGID)
    else:
        assert got["create setuid"] == "EPERM"
    assert not (src / "null").exists() and not (src / "blk").exists()
