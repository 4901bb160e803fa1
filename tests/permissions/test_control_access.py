"""Who may run which control command and read which control file (SPEC 4, 5).

Admins (root, and dave through `access.admins = ["root", "@fmt_admins"]`) run every command
and read `metrics`; everyone else is refused (EACCES; EPERM for `mount`) and the refusal
changes nothing. With self service, a user attaches what she owns under the self-service
roots, becomes its owner, is capped by max_subtrees_per_user, and manages only her own.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.ctl import ctl_as, unexpected_answers
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import ROOT, config, make_dir, probe, self_service_config
from tests.support.users import Users

pytestmark = pytest.mark.needs_root


def _state(view: ViewHandle) -> list[tuple[object, ...]]:
    """What a refused command must not change: names, owners, grants, ro, holders."""
    return sorted(
        (r.get("name"), r.get("owner"), str(r.get("allow")), r.get("ro"), str(r.get("holders")))
        for r in view.mounts_json()
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("who", ["root", "dave"])
def test_control_admin_runs_every_command(
    view_factory: ViewFactory, source: Path, users: Users, who: str
) -> None:
    user = ROOT if who == "root" else users.dave
    view = view_factory(config_text=config())
    src = make_dir(source / "src", 0o755)
    other = make_dir(source / "other", 0o755)
    view.ok(f"attach byroot {other} owner={users.alice.name}")
    commands = [
        f"attach sub {src}",
        f"attach sub {src} holder=h1",
        "hold sub h2",
        "release sub h2",
        f"set sub ro owner={users.bob.name} allow=@{users.team.name}:rw",
        "set sub rw",
        "mount scratch tmpfs none",
        "detach scratch",
        "set byroot allow=*:ro",  # someone else's subtree
        "detach byroot",
        "detach sub",
    ]
    assert unexpected_answers(view.path, user, dict.fromkeys(commands, ("ok",))) == {}
    assert view.mounts_json() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("who", ["root", "dave", "alice", "bob", "carol"])
def test_control_metrics_readable_by_admins_only(
    view_factory: ViewFactory, users: Users, who: str
) -> None:
    user = {"root": ROOT, "dave": users.dave, "alice": users.alice, "bob": users.bob,
            "carol": users.carol}[who]
    view = view_factory(config_text=config())
    metrics = str(view.path / ".fusemount" / "metrics")
    got = probe(user, {"metrics": f"read_file({metrics!r})"})
    expected = 0 if who in ("root", "dave") else "EACCES"
    assert got == {"metrics": expected}
    if who in ("root", "dave"):
        assert b"fusemount_" in (view.path / ".fusemount" / "metrics").read_bytes()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("self_service", [False, True])
def test_control_non_admins_are_refused_and_nothing_changes(
    view_factory: ViewFactory, source: Path, users: Users, self_service: bool
) -> None:
    """Without self service nobody but admins may act, even on their own subtree; with it,
    nothing beyond attach/detach/set of one's own opens up."""
    ss_root = make_dir(source / "ss", 0o755)
    text = self_service_config(ss_root, admins=True) if self_service else config()
    view = view_factory(config_text=text)
    mine = make_dir(source / "mine", 0o755, users.alice.uid, users.alice.gid)
    theirs = make_dir(source / "theirs", 0o755)
    view.ok(f"attach alices {mine} owner={users.alice.name} allow={users.bob.name}:ro")
    view.ok(f"attach roots {theirs} allow=@{users.team.name}:rw holder=keep")
    fresh = make_dir(ss_root / "fresh", 0o755, users.alice.uid, users.alice.gid)
    before = _state(view)
    for user in (users.alice, users.bob, users.carol):
        # carol cannot see either subtree under self service: missing is fine for her
        hidden = {"ENOENT"} if user is users.carol and self_service else set()
        attempts: dict[str, set[str]] = {
            # a source outside the roots, or self service off: EACCES either way
            f"attach new {mine}": {"EACCES"},
            f"attach new {theirs}": {"EACCES"},
            "mount scratch tmpfs none": {"EPERM"},
            "hold roots h9": {"EACCES"},
            "release roots keep": {"EACCES"},
            "set roots ro": {"EACCES"} | hidden,
            "detach roots": {"EACCES"} | hidden,
        }
        if user is not users.alice or not self_service:
            attempts[f"attach new {fresh}"] = {"EACCES"}  # not hers, or no self service
            # SPEC 5: detach/set of one's own subtree is a self-service right only.
            attempts["set alices ro"] = attempts["detach alices"] = {"EACCES"} | hidden
        wrong = unexpected_answers(view.path, user, attempts)
        assert not wrong, f"{user.name}: {wrong}"
        assert _state(view) == before, f"refused commands of {user.name} changed the table"
    assert sorted(os.listdir(view.path)) == [".fusemount", "alices", "roots"]


def _ss_view(view_factory: ViewFactory, source: Path, cap: int) -> tuple[ViewHandle, Path]:
    ss_root = make_dir(source / "ss", 0o755)
    return view_factory(config_text=self_service_config(ss_root, cap, admins=True)), ss_root


@pytest.mark.timeout(60)
def test_control_self_service_attach_own_source_makes_caller_owner(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, ss_root = _ss_view(view_factory, source, 8)
    alice = users.alice
    src = make_dir(ss_root / "alice1", 0o700, alice.uid, alice.gid)
    (src / "note").write_text("mine\n")
    os.chown(src / "note", alice.uid, alice.gid)
    reply = ctl_as(alice, view.path, f"attach a1 {src}")
    assert reply.errno is None and reply.data.get("ok") is True, reply.describe("attach")
    assert reply.data.get("ino") == os.stat(src).st_ino
    (record,) = view.mounts_json()
    assert record["name"] == "a1" and record["owner"] == alice.uid
    # She owns it: read-write for her, invisible to carol.
    note = str(view.path / "a1" / "note")
    assert probe(alice, {"write": f"append_file({note!r})"}) == {"write": 0}
    assert probe(users.carol, {"read": f"read_file({note!r})"})["read"] in ("ENOENT", "EACCES")


@pytest.mark.timeout(60)
def test_control_self_service_refuses_other_owner_and_outside_roots(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, ss_root = _ss_view(view_factory, source, 8)
    alice = users.alice
    bobs = make_dir(ss_root / "bobs", 0o755, users.bob.uid, users.bob.gid)
    roots = make_dir(ss_root / "roots", 0o755)
    outside = make_dir(source / "outside", 0o755, alice.uid, alice.gid)
    mine = make_dir(ss_root / "mine", 0o755, alice.uid, alice.gid)
    link = ss_root / "link"
    link.symlink_to(outside)
    wrong = unexpected_answers(view.path, alice, {
        f"attach x {bobs}": {"EACCES"},
        f"attach x {roots}": {"EACCES"},
        f"attach x {outside}": {"EACCES"},
        f"attach x {ss_root}/../outside": {"EACCES"},
        f"attach x {link}": {"EACCES", "ELOOP"},
        # Only admins may hand a subtree to someone else, even one made of her own source.
        f"attach x {mine} owner={users.bob.name}": {"EACCES"},
    })
    assert not wrong, wrong
    assert view.mounts_json() == []


@pytest.mark.timeout(60)
def test_control_self_service_per_user_cap_is_edquot(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, ss_root = _ss_view(view_factory, source, 2)
    alice = users.alice
    dirs = [make_dir(ss_root / f"a{i}", 0o755, alice.uid, alice.gid) for i in range(4)]
    # Subtrees of others do not count against her cap.
    view.ok(f"attach rootowned {make_dir(source / 'r', 0o755)}")
    assert ctl_as(alice, view.path, f"attach a0 {dirs[0]}").errno is None
    assert ctl_as(alice, view.path, f"attach a1 {dirs[1]}").errno is None
    reply = ctl_as(alice, view.path, f"attach a2 {dirs[2]}")
    assert reply.errno == errno.EDQUOT, reply.describe("attach a2")
    assert {r["name"] for r in view.mounts_json()} == {"rootowned", "a0", "a1"}
    # bob has his own cap; detaching one of hers frees a place for her.
    bobs = make_dir(ss_root / "b0", 0o755, users.bob.uid, users.bob.gid)
    assert ctl_as(users.bob, view.path, f"attach b0 {bobs}").errno is None
    assert ctl_as(alice, view.path, "detach a0").errno is None
    reply = ctl_as(alice, view.path, f"attach a3 {dirs[3]}")
    assert reply.errno is None, reply.describe("attach a3")


@pytest.mark.timeout(60)
def test_control_self_service_manages_own_subtrees_only(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, ss_root = _ss_view(view_factory, source, 8)
    alice = users.alice
    mine = make_dir(ss_root / "mine", 0o755, alice.uid, alice.gid)
    assert ctl_as(alice, view.path, f"attach mine {mine}").errno is None
    shared = make_dir(source / "shared", 0o755)
    view.ok(f"attach shared {shared} allow={alice.name}:rw")  # she sees it, does not own it
    hidden = make_dir(source / "hidden", 0o755)
    view.ok(f"attach hidden {hidden}")
    bobs = make_dir(ss_root / "bobs", 0o755, users.bob.uid, users.bob.gid)
    assert ctl_as(users.bob, view.path, f"attach bobs {bobs}").errno is None

    wrong = unexpected_answers(view.path, alice, {
        "set shared ro": {"EACCES"},
        f"set shared allow={alice.name}:rw,*:ro": {"EACCES"},
        "detach shared": {"EACCES"},
        "set bobs ro": {"EACCES", "ENOENT"},
        "detach bobs": {"EACCES", "ENOENT"},
        "set hidden ro": {"EACCES", "ENOENT"},
        "detach hidden": {"EACCES", "ENOENT"},
        f"set mine owner={users.bob.name}": {"EACCES"},
        "set mine ro": {"ok"},
        f"set mine rw allow={users.bob.name}:ro": {"ok"},
    })
    assert not wrong, wrong
    records = {r["name"]: r for r in view.mounts_json()}
    assert records["mine"]["owner"] == alice.uid
    assert records["mine"]["ro"] is False
    assert records["shared"]["ro"] is False and records["hidden"]["ro"] is False
    assert set(records) == {"mine", "shared", "hidden", "bobs"}
    reply = ctl_as(alice, view.path, "detach mine")
    assert reply.errno is None, reply.describe("detach mine")
    assert {r["name"] for r in view.mounts_json()} == {"shared", "hidden", "bobs"}
