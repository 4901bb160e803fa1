"""Device nodes and set-ID bits as natively, per caller (SPEC 3; issue 14 item 1, issue 12 item 11).

Differential: the same script runs as root, the owner (alice), a group member (bob) and an
outsider (carol) on a native directory and on the view of an identical directory, and must
get the same answers: mknod of char/block devices and whiteouts, chmod u+s/g+s, a
permitted non-owner's write/truncate/chown clearing set-ID bits, and set-group-ID
directories. The view itself stays nosuid,nodev (tests/security/test_nodes_and_modes.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.permissions import ROOT, config
from tests.support.users import User, Users, py_as

pytestmark = pytest.mark.needs_root

# Runs as one user with BASE (a directory) and TAG (the user's short name). Each user works on
# its own files, made by _prepare, so no user's step changes another's starting point.
_SCRIPT = r'''
base, tag = BASE, TAG
out = {}
def mode_of(p):
    try:
        st = os.lstat(p)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return [oct(st.st_mode), st.st_uid, st.st_gid, st.st_rdev]
def step(name, fn, path=None):
    out[name] = [errno_of(fn), mode_of(path) if path else None]
p = lambda n: os.path.join(base, n + "-" + tag)
step("mknod chr 1:3", lambda: os.mknod(p("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3)),
     p("null"))
step("mknod blk 7:0", lambda: os.mknod(p("loop"), stat.S_IFBLK | 0o600, os.makedev(7, 0)),
     p("loop"))
step("mknod whiteout", lambda: os.mknod(p("wh"), stat.S_IFCHR, os.makedev(0, 0)), p("wh"))
step("create 04755", lambda: os.close(os.open(p("c"), os.O_CREAT | os.O_WRONLY, 0o4755)),
     p("c"))
step("chmod own u+s", lambda: os.chmod(p("c"), 0o4755), p("c"))
step("chmod own g+s", lambda: os.chmod(p("c"), 0o2755), p("c"))
step("chmod alice's u+s", lambda: os.chmod(p("a"), 0o4775), p("a"))
def write_x(name):
    fd = os.open(p(name), os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
step("write 06777", lambda: write_x("w"), p("w"))
step("write 02767 (no group x)", lambda: write_x("s"), p("s"))
step("truncate 06777", lambda: os.truncate(p("t"), 3), p("t"))
step("O_TRUNC 06777", lambda: os.close(os.open(p("o"), os.O_WRONLY | os.O_TRUNC)), p("o"))
step("chown 06777 to root", lambda: os.chown(p("g"), 0, -1), p("g"))
sg = os.path.join(base, "sgid")
step("mkdir in setgid dir", lambda: os.mkdir(os.path.join(sg, "d-" + tag), 0o755),
     os.path.join(sg, "d-" + tag))
step("create in setgid dir",
     lambda: os.close(os.open(os.path.join(sg, "f-" + tag), os.O_CREAT | os.O_WRONLY, 0o2775)),
     os.path.join(sg, "f-" + tag))
print(json.dumps(out))
'''


def _prepare(root: Path, users: Users) -> None:
    """The starting tree: world-writable, alice's set-ID files for every user, a setgid dir."""
    root.chmod(0o777)
    alice, team = users.alice, users.team.gid
    for tag in ("root", "alice", "bob", "carol"):
        for name, mode in (("a", 0o775), ("w", 0o6777), ("t", 0o6777), ("o", 0o6777),
                           ("g", 0o6777), ("s", 0o2767)):
            f = root / f"{name}-{tag}"
            f.write_bytes(b"abcdef")
            os.chown(f, alice.uid, team)
            f.chmod(mode)
    sgid = root / "sgid"
    sgid.mkdir()
    os.chown(sgid, alice.uid, team)
    sgid.chmod(0o2777)


def _run(user: User, tag: str, base: Path) -> object:
    code = f"BASE = {str(base)!r}\nTAG = {tag!r}\n" + _SCRIPT
    return py_as(user, code, umask=0o022)


def _differential(view_factory: ViewFactory, test_root: Path, users: Users,
                  extra: str = "") -> dict[str, tuple[object, object]]:
    native = Path(test_root) / f"native-{os.getpid()}-{id(users)}-{len(extra)}"
    native.mkdir()
    src = Path(test_root) / f"src-{os.getpid()}-{id(users)}-{len(extra)}"
    src.mkdir()
    for d in (native, src):
        _prepare(d, users)
    view = view_factory(config_text=config(extra))
    view.ok(f"attach sp {src} owner={users.alice.name} "
            f"allow={users.bob.name}:rw,{users.carol.name}:rw")
    through = view.path / "sp"
    out: dict[str, tuple[object, object]] = {}
    for tag, user in (("root", ROOT), ("alice", users.alice), ("bob", users.bob),
                      ("carol", users.carol)):
        out[tag] = (_run(user, tag, native), _run(user, tag, through))
    return out


def _first_difference(native: object, view: object) -> str:
    assert isinstance(native, dict) and isinstance(view, dict)
    for key in native:
        if native[key] != view.get(key):
            return f"{key}: native {native[key]} view {view.get(key)}"
    return ""


@pytest.mark.timeout(120)
def test_special_files_and_setid_bits_match_native_for_every_kind_of_caller(
    view_factory: ViewFactory, test_root: Path, users: Users
) -> None:
    got = _differential(view_factory, test_root, users)
    diffs = {tag: _first_difference(n, v) for tag, (n, v) in got.items()}
    assert diffs == dict.fromkeys(diffs, ""), json.dumps(got, indent=1)
    # The differential must have exercised the interesting cases, not only refusals.
    root_native, _ = got["root"]
    bob_native, _ = got["bob"]
    assert isinstance(root_native, dict) and isinstance(bob_native, dict)
    assert root_native["mknod blk 7:0"][0] == 0
    assert bob_native["mknod chr 1:3"][0] == "EPERM"
    assert bob_native["write 06777"][0] == 0
    assert bob_native["write 06777"][1][0] == oct(0o100777)  # set-ID bits cleared natively


@pytest.mark.timeout(120)
def test_deny_special_files_refuses_device_nodes_and_setid_bits_for_everyone(
    view_factory: ViewFactory, test_root: Path, users: Users
) -> None:
    got = _differential(view_factory, test_root, users, "deny_special_files = true\n")
    for tag, (_, through) in got.items():
        assert isinstance(through, dict)
        for step in ("mknod chr 1:3", "mknod blk 7:0", "mknod whiteout", "create 04755"):
            assert through[step][0] == "EPERM", (tag, step, through[step])
    _, by_root = got["root"]
    assert isinstance(by_root, dict)
    assert by_root["chmod alice's u+s"][0] == "EPERM"
    # Clearing bits is never refused: a permitted non-owner's write still clears them.
    _, by_bob = got["bob"]
    assert isinstance(by_bob, dict)
    assert by_bob["write 06777"] == [0, [oct(0o100777), users.alice.uid, users.team.gid, 0]]


@pytest.mark.timeout(60)
def test_deny_special_files_still_lets_a_write_clear_one_bit_and_keep_the_other(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """06745: a write clears set-user-ID and keeps set-group-ID (no group execute), as
    natively; keeping a bit the file has is not setting one."""
    alice, bob = users.alice, users.bob
    source.chmod(0o777)
    f = source / "f"
    f.write_bytes(b"x")
    os.chown(f, alice.uid, users.team.gid)
    f.chmod(0o6767)
    f.chmod(0o6747 | 0o020)  # group may write, not execute
    view = view_factory(config_text=config("deny_special_files = true\n"))
    view.ok(f"attach sp {source} owner={alice.name} allow={bob.name}:rw")
    target = str(view.path / "sp" / "f")
    got = py_as(bob, f"""
fd = os.open({target!r}, os.O_WRONLY | os.O_APPEND)
os.write(fd, b"y")
os.close(fd)
print(json.dumps(oct(os.stat({target!r}).st_mode)))
""")
    assert got == oct(0o102767)
