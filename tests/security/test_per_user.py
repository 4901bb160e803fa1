"""Per-user attacks on subtree access (SPEC 5), with real users and the kernel's caches warm.

Each test runs in both SPEC 5 modes: the gate (default; an outsider may stat VIEW/NAME and
is refused by the kernel past it) and hidden names (the name looks missing).
Every backing file here is world-readable (and, where a write is tried, world-writable and
owned by the attacker), so the native permissions never stand in the way: whatever refuses
an outsider or a read-only grantee can only be the daemon's policy. Outsiders: carol (no grant)
and dave (not an admin under the default config). Allowed: alice and bob through @fmt_team.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.escape import LAYOUT_DIRS, LAYOUT_FILES, Trees, snapshot
from tests.support.users import PRELUDE, SYSTEM_PYTHON, User, Users, UserSteps, py_as

DENIED = {"ENOENT", "EACCES"}

# Run as a user: try every way in to each path under VIEW/NAME; print {what: errno name or 0}.
PROBE = """
v, name, files, dirs = {v!r}, {name!r}, {files!r}, {dirs!r}
root = v + "/" + name
out = {{}}
def read(p):
    with open(p, "rb") as f:
        f.read()
def chdir_and_list(p):
    os.chdir(p)
    try:
        os.listdir(".")
    finally:
        os.chdir("/")
for rel in ["", *dirs]:
    p = root + ("/" + rel if rel else "")
    out["stat " + rel] = errno_of(lambda: os.stat(p))
    out["lstat " + rel] = errno_of(lambda: os.lstat(p))
    out["listdir " + rel] = errno_of(lambda: os.listdir(p))
    out["chdir " + rel] = errno_of(lambda: chdir_and_list(p))
    out["opendir " + rel] = errno_of(lambda: os.close(os.open(p, os.O_RDONLY | os.O_DIRECTORY)))
    out["access " + rel] = 0 if os.access(p, os.F_OK) else "ENOENT"
for rel in files:
    p = root + "/" + rel
    out["stat " + rel] = errno_of(lambda: os.stat(p))
    out["read " + rel] = errno_of(lambda: read(p))
    out["write " + rel] = errno_of(lambda: os.close(os.open(p, os.O_WRONLY)))
    out["getxattr " + rel] = errno_of(lambda: os.getxattr(p, "user.x"))
out["via dotdot"] = errno_of(lambda: read(v + "/.fusemount/../" + name + "/" + files[0]))
out["create"] = errno_of(lambda: os.close(os.open(root + "/new", os.O_CREAT | os.O_WRONLY)))
out["mkdir"] = errno_of(lambda: os.mkdir(root + "/sub/new"))
out["ls view"] = sorted(os.listdir(v))
out["mounts"] = open(v + "/.fusemount/mounts").read()
out["mounts.json"] = json.load(open(v + "/.fusemount/mounts.json"))
print(json.dumps(out))
"""


def _probe(user: User, view: ViewHandle, name: str) -> dict[str, object]:
    got = py_as(user, PROBE.format(v=str(view.path), name=name, files=list(LAYOUT_FILES),
                                   dirs=list(LAYOUT_DIRS)))
    assert isinstance(got, dict)
    return got


# Views started in gate mode (SPEC 5 default): there, anyone may stat VIEW/NAME itself (the
# gate), and nothing more.
_GATED: set[Path] = set()
_GATE_ITSELF = ("stat ", "lstat ", "access ")


@pytest.fixture(params=["gate", "hidden"])
def view(request: pytest.FixtureRequest, view_factory: ViewFactory) -> ViewHandle:
    """Every attack runs against both SPEC 5 modes: the gate and hidden names."""
    if request.param == "hidden":
        return view_factory("[access]\nhide_names = true\n")
    handle = view_factory()
    _GATED.add(handle.path)
    return handle


def _assert_shut_out(got: dict[str, object], name: str, view: ViewHandle,
                     attached: bool = True) -> None:
    listings = {what: got.pop(what) for what in ("ls view", "mounts", "mounts.json")}
    if view.path in _GATED and attached:
        gate = {what: got.pop(what) for what in _GATE_ITSELF}
        assert gate == dict.fromkeys(_GATE_ITSELF, 0), gate
    leaks = {what: code for what, code in got.items() if code not in DENIED}
    assert not leaks, f"reached {name} (0 is success): {leaks}"
    assert listings["ls view"] == [".fusemount"], listings
    assert name not in str(listings["mounts"]), listings
    assert listings["mounts.json"] == [], listings


@pytest.fixture
def team_view(view: ViewHandle, trees: Trees, users: Users) -> ViewHandle:
    """`hidden` (owner root) shared read-write with @fmt_team only."""
    view.ok(f"attach hidden {trees.source} allow=@{users.team.name}:rw")
    return view


@pytest.mark.timeout(60)
def test_outsider_guessing_subtree_names_gets_enoent_and_sees_no_trace(
    team_view: ViewHandle, users: Users
) -> None:
    if team_view.path in _GATED:
        pytest.skip("hidden names only: in gate mode the name is unlisted, not secret")
    v = str(team_view.path)
    got = py_as(users.carol, f"""
v = {v!r}
out = {{}}
for guess in ["hidden", "nosuch", "Hidden", "hidden.", "hidden/."]:
    out["stat " + guess] = errno_of(lambda: os.stat(v + "/" + guess))
    out["open " + guess] = errno_of(lambda: os.close(os.open(v + "/" + guess, os.O_RDONLY)))
    out["nested " + guess] = errno_of(lambda: os.stat(v + "/" + guess + "/sub/deep/file"))
out["ls"] = sorted(os.listdir(v))
out["mounts"] = open(v + "/.fusemount/mounts").read()
out["mounts.json"] = json.load(open(v + "/.fusemount/mounts.json"))
print(json.dumps(out))
""")
    assert isinstance(got, dict)
    assert got.pop("ls") == [".fusemount"]
    assert got.pop("mounts") == ""
    assert got.pop("mounts.json") == []
    # The existing name must answer exactly as a name that does not exist: no oracle.
    assert got == dict.fromkeys(got, "ENOENT")


@pytest.mark.timeout(60)
def test_outsider_cannot_reach_subtree_after_allowed_users_warmed_every_cache(
    team_view: ViewHandle, trees: Trees, users: Users
) -> None:
    os.setxattr(trees.source / "hello.txt", "user.x", b"1")
    # Root and a team member walk, stat and read everything, so the kernel caches it all.
    assert snapshot(team_view.path / "hidden") == snapshot(trees.source)
    alice = _probe(users.alice, team_view, "hidden")
    assert alice["read sub/deep/file"] == 0 and alice["listdir sub/deep"] == 0, alice
    assert snapshot(team_view.path / "hidden") == snapshot(trees.source)
    # At once, two outsiders try every way in.
    for outsider in (users.carol, users.dave):
        _assert_shut_out(_probe(outsider, team_view, "hidden"), "hidden", team_view)
    # And the allowed member still gets in afterwards.
    assert _probe(users.bob, team_view, "hidden")["read sub/deep/file"] == 0


@pytest.mark.timeout(60)
def test_ro_grantee_gets_erofs_for_every_modification(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    alice = users.alice
    for dirpath, _dirnames, filenames in os.walk(trees.source):
        os.chmod(dirpath, 0o777)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666)
            os.chown(os.path.join(dirpath, f), alice.uid, alice.gid)
    (trees.source / "empty").mkdir(mode=0o777)
    (trees.source / "empty").chmod(0o777)
    os.setxattr(trees.source / "hello.txt", "user.keep", b"1")
    before = snapshot(trees.source)
    view.ok(f"attach shared {trees.source} allow={alice.name}:ro")
    d = str(view.path / "shared")
    got = py_as(alice, f"""
d = {d!r}
f = d + "/hello.txt"
def trunc_open():
    os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
print(json.dumps({{
    "read": errno_of(lambda: open(f, "rb").read()),
    "create": errno_of(lambda: os.close(os.open(d + "/new", os.O_CREAT | os.O_WRONLY, 0o644))),
    "create excl": errno_of(lambda: os.close(os.open(d + "/new", os.O_CREAT | os.O_EXCL
                                                     | os.O_RDWR, 0o644))),
    "open wronly": errno_of(lambda: os.close(os.open(f, os.O_WRONLY))),
    "open rdwr": errno_of(lambda: os.close(os.open(f, os.O_RDWR))),
    "open append": errno_of(lambda: os.close(os.open(f, os.O_WRONLY | os.O_APPEND))),
    "open trunc": errno_of(trunc_open),
    "truncate": errno_of(lambda: os.truncate(f, 0)),
    "chmod": errno_of(lambda: os.chmod(f, 0o600)),
    "chown": errno_of(lambda: os.chown(f, -1, {alice.gid})),
    "utime": errno_of(lambda: os.utime(f, (1, 1))),
    "unlink": errno_of(lambda: os.unlink(f)),
    "rename": errno_of(lambda: os.rename(f, d + "/moved")),
    "rename dir": errno_of(lambda: os.rename(d + "/sub", d + "/sub2")),
    "link": errno_of(lambda: os.link(f, d + "/linked")),
    "symlink": errno_of(lambda: os.symlink("hello.txt", d + "/lnk")),
    "mkdir": errno_of(lambda: os.mkdir(d + "/newdir")),
    "rmdir": errno_of(lambda: os.rmdir(d + "/empty")),
    "mkfifo": errno_of(lambda: os.mkfifo(d + "/fifo")),
    "setxattr": errno_of(lambda: os.setxattr(f, "user.new", b"1")),
    "removexattr": errno_of(lambda: os.removexattr(f, "user.keep")),
    "write in subdir": errno_of(lambda: os.close(os.open(d + "/sub/file", os.O_WRONLY))),
}}))
""")
    assert isinstance(got, dict)
    assert got.pop("read") == 0
    assert got == dict.fromkeys(got, "EROFS")
    assert snapshot(trees.source) == before
    assert os.listxattr(trees.source / "hello.txt") == ["user.keep"]


# Steps that use the process's cwd (VIEW/NAME/sub) and relative paths only.
_INSIDE = """
return {
    "stat file": errno_of(lambda: os.stat("file")),
    "stat .": errno_of(lambda: os.stat(".")),
    "stat ..": errno_of(lambda: os.stat("..")),
    "listdir .": errno_of(lambda: os.listdir(".")),
    "listdir deep": errno_of(lambda: os.listdir("deep")),
    "read file": errno_of(lambda: open("file", "rb").read()),
    "read deep/file": errno_of(lambda: open("deep/file", "rb").read()),
    "read ../hello.txt": errno_of(lambda: open("../hello.txt", "rb").read()),
}
"""


def _inside_across(user: User, cwd: Path, change: Callable[[], object]) -> dict[str, object]:
    """Run the _INSIDE steps as user, cwd inside the view, before and after change(): before,
    every one must succeed; return what they got after."""
    with UserSteps(user, cwd, [_INSIDE, _INSIDE]) as process:
        before = process.step()
        assert before == dict.fromkeys(before, 0), before
        change()
        return process.step()


@pytest.mark.timeout(60)
def test_revoked_grant_takes_effect_at_once_for_process_with_cwd_inside(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    view.ok(f"attach shared {trees.source} allow={users.alice.name}:rw")
    after = _inside_across(users.alice, view.path / "shared" / "sub",
                           lambda: view.ok("set shared allow="))
    leaks = {what: code for what, code in after.items() if code not in DENIED}
    assert not leaks, f"a revoked grant still works: {leaks}"
    _assert_shut_out(_probe(users.alice, view, "shared"), "shared", view)


@pytest.mark.timeout(60)
def test_revoked_group_grant_takes_effect_at_once_after_warm_walk(
    team_view: ViewHandle, users: Users
) -> None:
    assert _probe(users.bob, team_view, "hidden")["read sub/deep/file"] == 0
    team_view.ok(f"set hidden allow={users.alice.name}:ro")
    _assert_shut_out(_probe(users.bob, team_view, "hidden"), "hidden", team_view)
    assert _probe(users.alice, team_view, "hidden")["read sub/deep/file"] == 0


@pytest.mark.timeout(60)
def test_detached_subtree_is_gone_at_once_for_everyone(
    team_view: ViewHandle, trees: Trees, users: Users
) -> None:
    before = snapshot(trees.source)
    assert snapshot(team_view.path / "hidden") == before
    after = _inside_across(users.alice, team_view.path / "hidden" / "sub",
                           lambda: team_view.ok("detach hidden"))
    leaks = {what: code for what, code in after.items() if code not in DENIED | {"ESTALE"}}
    assert not leaks, f"a detached subtree still answers: {leaks}"
    for user in (users.alice, users.bob):
        _assert_shut_out(_probe(user, team_view, "hidden"), "hidden", team_view, False)
    assert not (team_view.path / "hidden").exists()
    assert not os.path.lexists(team_view.path / "hidden" / "sub" / "deep" / "file")
    assert os.listdir(team_view.path) == [".fusemount"]
    assert team_view.mounts_json() == []
    assert snapshot(trees.source) == before


@pytest.mark.timeout(60)
def test_outsider_handed_an_open_directory_descriptor_cannot_walk_through_it(
    team_view: ViewHandle, users: Users
) -> None:
    """A descriptor inherited from an allowed process is not a grant: every request the
    outsider makes through it is judged as the outsider. (fstat of the descriptor itself and
    reading the entries of the already open directory need no permission natively either:
    plain descriptor semantics, not asserted.)"""
    sub = team_view.path / "hidden" / "sub"
    fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert (sub / "file").read_bytes()  # warm: the kernel has the entry and its attributes
        os.stat("file", dir_fd=fd)
        carol = users.carol
        code = PRELUDE + f"""
fd = {fd}
def read_at(name):
    f = os.open(name, os.O_RDONLY, dir_fd=fd)
    try:
        os.read(f, 10)
    finally:
        os.close(f)
print(json.dumps({{
    "fstatat file": errno_of(lambda: os.stat("file", dir_fd=fd)),
    "fstatat deep/file": errno_of(lambda: os.stat("deep/file", dir_fd=fd)),
    "openat file": errno_of(lambda: read_at("file")),
    "openat deep/file": errno_of(lambda: read_at("deep/file")),
    "create at": errno_of(lambda: os.close(os.open("new", os.O_CREAT | os.O_WRONLY, dir_fd=fd))),
    "via /proc": errno_of(lambda: os.stat("/proc/self/fd/%d/file" % fd)),
    "fchdir": errno_of(lambda: (os.fchdir(fd), os.stat("file"))),
}}))
"""
        result = subprocess.run(
            ["setpriv", f"--reuid={carol.uid}", f"--regid={carol.gid}", "--init-groups", "--",
             SYSTEM_PYTHON, "-I", "-c", code],
            pass_fds=[fd], capture_output=True, text=True, timeout=60, cwd="/", check=False,
        )
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.splitlines()[-1])
    leaks = {what: c for what, c in got.items() if c not in DENIED}
    assert not leaks, f"outsider got through an inherited descriptor (0 is success): {leaks}"


@pytest.mark.timeout(60)
def test_subtree_set_readonly_takes_effect_at_once_for_a_writer(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    trees.source.chmod(0o777)
    mine = trees.source / "mine"
    mine.write_bytes(b"alice's\n")
    os.chown(mine, users.alice.uid, users.alice.gid)
    view.ok(f"attach shared {trees.source} allow={users.alice.name}:rw")
    d = str(view.path / "shared")
    writes = f"""
d = {d!r}
def append(name):
    with open(d + "/" + name, "ab") as f:
        f.write(b"more\\n")
def tag(name):
    return name + str(len(os.listdir(d)))
print(json.dumps({{
    "create": errno_of(lambda: append(tag("new"))),
    "append": errno_of(lambda: append("mine")),
    "mkdir": errno_of(lambda: os.mkdir(d + "/" + tag("dir"))),
    "link": errno_of(lambda: os.link(d + "/mine", d + "/" + tag("link"))),
    "rename": errno_of(lambda: os.rename(d + "/mine", d + "/mine.tmp")),
    "rename back": errno_of(lambda: os.rename(d + "/mine.tmp", d + "/mine")),
}}))
"""
    # Warm: alice writes in every way, so the kernel has every entry and attribute cached.
    assert py_as(users.alice, writes) == dict.fromkeys(
        ["create", "append", "mkdir", "link", "rename", "rename back"], 0)
    before = snapshot(trees.source)
    view.ok("set shared ro")
    got = py_as(users.alice, writes)
    assert isinstance(got, dict)
    assert got.pop("rename back") == "ENOENT"  # the refused rename left nothing to move back
    assert got == dict.fromkeys(got, "EROFS")
    assert snapshot(trees.source) == before
