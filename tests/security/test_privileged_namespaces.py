"""Attacks that borrow the daemon's own privileges: xattr namespaces and shared caps.

The daemon runs as root and borrows only the caller's fsuid/fsgid for a request, so every
capability that setfsuid does not drop (CAP_SYS_ADMIN for `trusted.*`, CAP_SETFCAP for
`security.capability`) would be the caller's through the view unless the daemon refuses it.
SPEC 5: inside a subtree the caller gets exactly their native rights. SPEC 6: limits fail one
request; they must not let a caller with no grant at all lock the admins out of the control
file (SPEC 4: admins may run every command).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.escape import Trees
from tests.support.users import SYSTEM_PYTHON, Users, py_as

# struct vfs_cap_data revision 2 granting CAP_SETUID (bit 7) permitted+effective: what
# `setcap cap_setuid+ep FILE` writes. On an executable it would be a root shell.
CAP_SETUID_BLOB = bytes.fromhex("01000002" "80000000" "00000000" "00000000" "00000000")


@pytest.mark.timeout(60)
def test_user_cannot_set_or_read_privileged_xattrs_through_view(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    alice = users.alice
    trees.source.chmod(0o777)
    mine = trees.source / "mine"
    mine.write_bytes(b"#!/bin/sh\nid\n")
    os.chmod(mine, 0o755)
    os.chown(mine, alice.uid, alice.gid)
    os.setxattr(trees.source / "hello.txt", "trusted.secret", b"root only")
    private = trees.source / "private"
    private.write_bytes(b"root's\n")
    private.chmod(0o600)
    os.setxattr(private, "user.secret", b"needs read permission")
    view.ok(f"attach data {trees.source} allow={alice.name}:rw")
    d = str(view.path / "data")
    got = py_as(alice, f"""
d = {d!r}
cap = bytes.fromhex({CAP_SETUID_BLOB.hex()!r})
print(json.dumps({{
    "set security.capability": errno_of(lambda: os.setxattr(d + "/mine",
                                                            "security.capability", cap)),
    "set trusted.x": errno_of(lambda: os.setxattr(d + "/mine", "trusted.x", b"1")),
    "set security.evil": errno_of(lambda: os.setxattr(d + "/mine", "security.evil", b"1")),
    "remove trusted.secret": errno_of(lambda: os.removexattr(d + "/hello.txt",
                                                             "trusted.secret")),
    "get trusted.secret": errno_of(lambda: os.getxattr(d + "/hello.txt", "trusted.secret")),
    "list shows trusted": [n for n in os.listxattr(d + "/hello.txt") if n.startswith("trusted")]
                          or 0,
    "get user.secret of 0600 file": errno_of(lambda: os.getxattr(d + "/private",
                                                                 "user.secret")),
    "set user.x on own file": errno_of(lambda: os.setxattr(d + "/mine", "user.x", b"1")),
}}))
""")
    assert isinstance(got, dict)
    assert got.pop("set user.x on own file") == 0  # the control: alice may write xattrs here
    assert got.pop("list shows trusted") == 0
    assert got.pop("get user.secret of 0600 file") == "EACCES"
    assert got.pop("get trusted.secret") in ("ENODATA", "EPERM")
    assert all(code in ("EPERM", "ENOTSUP") for code in got.values()), got
    assert sorted(os.listxattr(mine)) == ["user.x"], "a privileged xattr reached the source"
    assert os.getxattr(trees.source / "hello.txt", "trusted.secret") == b"root only"


@pytest.mark.timeout(60)
def test_outsider_holding_every_open_file_slot_cannot_lock_admin_out_of_ctl(
    view_factory: ViewFactory, trees: Trees, users: Users
) -> None:
    view = view_factory(config_text="[limits]\nmax_open_files = 16\n")
    version = view.path / ".fusemount" / "version"
    # carol has no grant at all; `version` is readable by everyone.
    hog = subprocess.Popen(
        ["setpriv", f"--reuid={users.carol.uid}", f"--regid={users.carol.gid}",
         "--init-groups", "--", SYSTEM_PYTHON, "-I", "-c",
         "import os, sys\nfds = []\n"
         "try:\n    while len(fds) < 64:\n"
         f"        fds.append(os.open({str(version)!r}, os.O_RDONLY))\n"
         "except OSError as e:\n    pass\n"
         "print(len(fds), flush=True)\nsys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert hog.stdout is not None and hog.stdin is not None
        held = int(hog.stdout.readline())
        assert held > 0
        try:
            reply = view.ctl(f"attach data {trees.source}")
        except OSError as exc:
            pytest.fail(f"admin cannot even open ctl while carol holds {held} opens: {exc}")
        assert reply.errno is None, f"admin's command refused while carol holds {held} opens"
        view.ok("detach data")
    finally:
        if hog.stdin is not None:
            hog.stdin.close()
        try:
            hog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hog.kill()
            hog.wait()
