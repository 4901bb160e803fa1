"""The subtree gate (SPEC 5, `access.hide_names = false`), with real users and warm caches.

alice owns the subtree, bob is allowed (`:rw`), dave is an admin by group (`@fmt_admins`),
carol is the outsider. The backing tree is world-readable and world-writable below its root,
so whatever refuses carol is the gate the kernel enforces from its caches (or the daemon), and
whatever refuses alice directly in VIEW/NAME is the source root's own permissions.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import config, make_dir, make_file, probe
from tests.support.users import Users, UserSteps, py_as

pytestmark = pytest.mark.needs_root

ACL = "system.posix_acl_access"
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NAMES = {_USER_OBJ: "user:", _USER: "user:", _GROUP_OBJ: "group:", _GROUP: "group:",
          _MASK: "mask:", _OTHER: "other:"}
SRC_GID = 4242  # the source root's group: nobody here is in it


def _acl_text(blob: bytes) -> list[str]:
    """The access ACL as `getfacl -n` prints its entries (numeric ids)."""
    assert struct.unpack_from("<I", blob)[0] == 2
    out = []
    for i in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, i)
        who = str(ident) if tag in (_USER, _GROUP) else ""
        rwx = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        out.append(f"{_NAMES[tag]}{who}:{rwx}")
    return out


@pytest.fixture
def gated(view_factory: ViewFactory, source: Path, users: Users) -> ViewHandle:
    """VIEW/box: owner alice, bob allowed rw; source root 0755 root:SRC_GID."""
    src = make_dir(source / "box", 0o755, 0, SRC_GID)
    make_dir(src / "sub", 0o777)
    make_file(src / "sub" / "file", 0o666, text="inside\n")
    make_file(src / "top.txt", 0o666, text="top\n")
    view = view_factory(config_text=config())
    view.ok(f"attach box {src} owner={users.alice.name} allow={users.bob.name}:rw")
    return view


def _walk_ops(box: Path) -> dict[str, str]:
    sub, file = box / "sub", box / "sub" / "file"
    return {
        "stat box": f"os.stat({str(box)!r})",
        "list box": f"os.listdir({str(box)!r})",
        "stat sub": f"os.stat({str(sub)!r})",
        "list sub": f"os.listdir({str(sub)!r})",
        "stat file": f"os.stat({str(file)!r})",
        "read file": f"read_file({str(file)!r})",
        "read top": f"read_file({str(box / 'top.txt')!r})",
    }


def _outsider_expected(ops: dict[str, str]) -> dict[str, object]:
    # Only the gate itself may be stat'ed (SPEC 5); everything past it is EACCES.
    return {k: (0 if k == "stat box" else "EACCES") for k in ops}


@pytest.mark.timeout(90)
def test_gate_outsider_refused_after_allowed_users_warmed_every_cache(
    gated: ViewHandle, users: Users
) -> None:
    ops = _walk_ops(gated.path / "box")
    for allowed in (users.alice, users.bob, users.dave):
        got = probe(allowed, ops)
        assert got == dict.fromkeys(ops, 0), f"{allowed.name}: {got}"
    got = probe(users.carol, ops)
    assert got == _outsider_expected(ops), got
    # Twice, so the second attempt is answered from whatever the first one cached.
    assert probe(users.carol, ops) == _outsider_expected(ops)
    # And the allowed users are still let in afterwards.
    assert probe(users.bob, ops) == dict.fromkeys(ops, 0)


@pytest.mark.timeout(60)
def test_gate_attributes_and_acl_let_in_exactly_the_policy(
    gated: ViewHandle, source: Path, users: Users
) -> None:
    box = gated.path / "box"
    st, src = os.stat(box), os.stat(source / "box")
    assert (st.st_uid, st.st_gid) == (users.alice.uid, SRC_GID)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o770
    assert (st.st_mtime_ns, st.st_nlink) == (src.st_mtime_ns, src.st_nlink)
    expected = ["user::rwx", f"user:{users.bob.uid}:rwx", "group::---",
                f"group:{users.admins.gid}:rwx", "mask::rwx", "other::---"]
    assert _acl_text(os.getxattr(box, ACL)) == expected
    assert ACL in os.listxattr(box)
    # Anyone may read the gate, the outsider too: it is what the kernel asks for.
    raw = py_as(users.carol, f"print(json.dumps(list(os.getxattr({str(box)!r}, {ACL!r}))))")
    assert isinstance(raw, list)
    assert _acl_text(bytes(raw)) == expected
    if shutil.which("getfacl") is not None:  # the `acl` package, when installed
        shown = subprocess.run(["getfacl", "-n", "-c", str(box)], capture_output=True,
                               text=True, check=True, timeout=30).stdout.split()
        assert shown == expected
    # The source root itself is untouched.
    assert ACL not in os.listxattr(source / "box")
    assert (src.st_uid, src.st_gid, stat.S_IMODE(src.st_mode)) == (0, SRC_GID, 0o755)


@pytest.mark.timeout(90)
def test_gate_revoke_with_set_takes_effect_on_the_very_next_walk(
    gated: ViewHandle, users: Users
) -> None:
    ops = _walk_ops(gated.path / "box")
    assert probe(users.bob, ops) == dict.fromkeys(ops, 0)
    gated.ok("set box allow=")
    assert probe(users.bob, ops) == _outsider_expected(ops)
    assert _acl_text(os.getxattr(gated.path / "box", ACL)) == [
        "user::rwx", "group::---", f"group:{users.admins.gid}:rwx", "mask::rwx", "other::---"]
    # A grant works as promptly, though the kernel had cached the gate refusing carol.
    assert probe(users.carol, ops) == _outsider_expected(ops)
    gated.ok(f"set box allow={users.carol.name}:ro")
    assert probe(users.carol, ops) == dict.fromkeys(ops, 0)
    # A new owner: the gate's owner follows at once.
    gated.ok(f"set box owner={users.bob.name} allow=")
    assert os.stat(gated.path / "box").st_uid == users.bob.uid
    assert probe(users.bob, ops) == dict.fromkeys(ops, 0)
    assert probe(users.alice, ops) == _outsider_expected(ops)
    assert probe(users.carol, ops) == _outsider_expected(ops)


@pytest.mark.timeout(60)
def test_gate_detach_takes_effect_on_the_very_next_walk(gated: ViewHandle, users: Users) -> None:
    ops = _walk_ops(gated.path / "box")
    assert probe(users.bob, ops) == dict.fromkeys(ops, 0)
    gated.ok("detach box")
    assert probe(users.bob, ops) == dict.fromkeys(ops, "ENOENT")
    assert not (gated.path / "box").exists()


@pytest.mark.timeout(60)
def test_gate_chmod_chown_and_acl_changes_on_the_gate_are_eperm(
    gated: ViewHandle, source: Path, users: Users
) -> None:
    box = str(gated.path / "box")
    acl = os.getxattr(box, ACL)
    tries = {
        "chmod": f"os.chmod({box!r}, 0o777)",
        "chown": f"os.chown({box!r}, -1, {users.alice.gid})",
        "chown uid": f"os.chown({box!r}, {users.bob.uid}, -1)",
        "setacl": f"os.setxattr({box!r}, {ACL!r}, {acl!r})",
        "removeacl": f"os.removexattr({box!r}, {ACL!r})",
        "set default acl": f"os.setxattr({box!r}, 'system.posix_acl_default', {acl!r})",
    }
    for user in (users.alice, users.bob):
        got = probe(user, tries)
        assert got == dict.fromkeys(tries, "EPERM"), f"{user.name}: {got}"
    # root too: the gate changes only with `set`.
    with pytest.raises(PermissionError):
        os.chmod(box, 0o777)
    with pytest.raises(PermissionError):
        os.chown(box, 0, 0)
    with pytest.raises(PermissionError):
        os.setxattr(box, ACL, acl)
    with pytest.raises(PermissionError):
        os.removexattr(box, ACL)
    src = os.stat(source / "box")
    assert (src.st_uid, src.st_gid, stat.S_IMODE(src.st_mode)) == (0, SRC_GID, 0o755)
    assert ACL not in os.listxattr(source / "box")
    assert _acl_text(os.getxattr(box, ACL))[1] == f"user:{users.bob.uid}:rwx"


@pytest.mark.timeout(60)
def test_gate_entries_directly_in_the_gate_are_judged_by_the_source_root(
    gated: ViewHandle, source: Path, users: Users
) -> None:
    box = gated.path / "box"
    alice = users.alice
    make_file(source / "box" / "victim", 0o666)
    make_file(source / "box" / "mover", 0o666)
    make_dir(source / "box" / "emptydir", 0o777)
    tries = {
        "create": f"create_file({str(box / 'new')!r})",
        "mkdir": f"os.mkdir({str(box / 'newdir')!r})",
        "mkfifo": f"os.mkfifo({str(box / 'fifo')!r})",
        "symlink": f"os.symlink('top.txt', {str(box / 'lnk')!r})",
        "link": f"os.link({str(box / 'sub' / 'file')!r}, {str(box / 'hard')!r})",
        "unlink": f"os.unlink({str(box / 'victim')!r})",
        "rmdir": f"os.rmdir({str(box / 'emptydir')!r})",
        "rename in": f"os.rename({str(box / 'top.txt')!r}, {str(box / 'moved')!r})",
        "rename out": f"os.rename({str(box / 'mover')!r}, {str(box / 'sub' / 'v')!r})",
        "create in sub": f"create_file({str(box / 'sub' / 'mine')!r})",
    }
    # Natively alice may not change the 0755 root-owned source root: nor through the gate.
    got = probe(alice, tries)
    expected: dict[str, object] = dict.fromkeys(tries, "EACCES")
    expected["create in sub"] = 0
    assert got == expected
    assert sorted(os.listdir(source / "box")) == ["emptydir", "mover", "sub", "top.txt", "victim"]
    # Once the source root lets her, she may.
    os.chmod(source / "box", 0o777)
    del tries["create in sub"]
    got = probe(alice, tries)
    assert got == dict.fromkeys(tries, 0), got
    assert os.stat(source / "box" / "new").st_uid == alice.uid


def _cwd_step(file: str) -> str:
    """A UserSteps step: is the cwd (inside the view) still usable, and file through it?"""
    return f"""
return {{
    "getcwd": errno_of(os.getcwd),
    "cwd": os.getcwd() if errno_of(os.getcwd) == 0 else None,
    "list .": errno_of(lambda: os.listdir(".")),
    "read file": errno_of(lambda: open({file!r}, "rb").read()),
    "stat ..": errno_of(lambda: os.stat("..")),
}}
"""


@pytest.mark.timeout(60)
def test_gate_allowed_users_cwd_stays_valid_after_outsider_lookups(
    gated: ViewHandle, users: Users
) -> None:
    """With hidden names, an outsider's failed lookup of VIEW/NAME drops the shared dentry and
    a shell whose cwd is VIEW/NAME then fails getcwd(); the gate never refuses a lookup."""
    box = gated.path / "box"
    with UserSteps(users.bob, box, [_cwd_step("sub/file")] * 3) as bob, \
            UserSteps(users.alice, box / "sub", [_cwd_step("file")] * 3) as alice:
        shells = {bob: str(box), alice: str(box / "sub")}
        before = {shell: shell.step() for shell in shells}
        for shell, cwd in shells.items():
            got = before[shell]
            assert got["cwd"] == cwd and set(got.values()) - {cwd} == {0}, got
        ops = _walk_ops(box) | {"stat nosuch": f"os.stat({str(gated.path / 'nosuch')!r})"}
        for _ in range(3):
            assert probe(users.carol, ops) == _outsider_expected(ops) | {"stat nosuch": "ENOENT"}
        assert {shell: shell.step() for shell in shells} == before
        # A `set` that keeps their grants keeps their working directories valid too.
        gated.ok(f"set box allow={users.bob.name}:rw,{users.dave.name}:ro")
        assert {shell: shell.step() for shell in shells} == before


@pytest.mark.timeout(60)
def test_gate_hide_names_true_keeps_enoent_and_source_attributes(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    src = make_dir(source / "box", 0o755, 0, SRC_GID)
    make_dir(src / "sub", 0o777)
    make_file(src / "sub" / "file", 0o666, text="inside\n")
    make_file(src / "top.txt", 0o666, text="top\n")
    view = view_factory(config_text=config("hide_names = true\n"))
    view.ok(f"attach box {src} owner={users.alice.name} allow={users.bob.name}:rw")
    ops = _walk_ops(view.path / "box")
    assert probe(users.bob, ops) == dict.fromkeys(ops, 0)
    got = probe(users.carol, ops)
    assert got == dict.fromkeys(ops, "ENOENT"), got
    st = os.stat(view.path / "box")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, SRC_GID, 0o755)
    assert ACL not in os.listxattr(view.path / "box")



def _requests(view: ViewHandle) -> int:
    total = 0
    for line in (view.path / ".fusemount" / "metrics").read_text().splitlines():
        if line.startswith("fusemount_requests_total{"):
            total += int(float(line.split()[-1]))
    return total


@pytest.mark.timeout(60)
def test_gate_warm_walks_by_allowed_users_need_no_request(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """The point of the gate (issue 13): the kernel answers a warm walk through the view root
    and VIEW/NAME from its caches, for non-root users too (the root's mode has no group bits,
    so its never-cached ACL is never asked for)."""
    src = make_dir(source / "box", 0o755)
    make_dir(src / "sub", 0o755)
    make_file(src / "sub" / "file", 0o644)
    view = view_factory(config_text=config() + "[cache]\nentry_timeout = 60\nattr_timeout = 60\n")
    view.ok(f"attach box {src} owner={users.alice.name} allow=@{users.team.name}:ro")
    path = str(view.path / "box" / "sub" / "file")
    loop = f"for _ in range(500): os.stat({path!r})\nprint(0)"
    for user in (users.alice, users.bob, users.dave):
        py_as(user, loop)  # warm-up: lookups, attributes, the gate's ACL
        before = _requests(view)
        py_as(user, loop)
        # reading metrics itself is 3 requests (open, read, release); allow a little slack
        assert _requests(view) - before <= 8, f"{user.name}: warm walks reached the daemon"
