"""Non-admins writing control commands: refused with the SPEC's errno, and nothing changes.

SPEC 4 and 5: only admins run every command; `mount` is EPERM for others, the rest EACCES
(ENOENT where the subtree is hidden from the caller). With `access.self_service` a user may
attach only directories they own under `self_service_roots`, and detach/set only their own
subtrees, never giving them away. A refused command leaves the table, the view and the state
file exactly as they were.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.ctl import ctl_as, unexpected_answers
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.dirs import fresh_dir
from tests.support.escape import Trees
from tests.support.permissions import self_service_config
from tests.support.users import Users


def _frozen(view: ViewHandle) -> tuple[object, ...]:
    return (view.mounts_json(), view.state.read_bytes(), sorted(os.listdir(view.path)))


@pytest.mark.timeout(90)
def test_non_admin_writing_every_control_command_is_refused_and_changes_nothing(
    view: ViewHandle, trees: Trees, users: Users, test_root: Path
) -> None:
    view.ok(f"attach data {trees.source} allow={users.alice.name}:rw")
    view.ok(f"attach held {trees.source} holder=h1")
    carols = fresh_dir(test_root, "carol-", users.carol)
    before = _frozen(view)
    src = trees.source
    denied = {"EACCES", "ENOENT"}
    commands = {
        f"attach x {src}": {"EACCES"},
        f"attach x {carols}": {"EACCES"},
        f"attach data {src} holder=h2": {"EACCES"},
        f"attach held {src} holder=h2": {"EACCES"},
        "mount x tmpfs none": {"EPERM"},
        "mount data tmpfs none holder=h2": {"EPERM"},
        "hold data h2": denied,
        "hold held h2": denied,
        "release held h1": denied,
        f"set data allow={users.carol.name}:rw": denied,
        "set data rw": denied,
        "set data ro": denied,
        f"set data owner={users.carol.name}": denied,
        "detach data": denied,
        "detach data force": denied,
        "detach held force": denied,
    }
    for user in (users.carol, users.alice, users.dave):
        wrong = unexpected_answers(view.path, user, commands)
        assert not wrong, f"{user.name}: {wrong}"
        assert _frozen(view) == before, f"a refused command by {user.name} changed something"


@pytest.mark.timeout(90)
def test_self_service_user_cannot_take_others_sources_or_subtrees(
    view_factory: ViewFactory, trees: Trees, users: Users, test_root: Path
) -> None:
    roots = fresh_dir(test_root, "selfservice-")
    view = view_factory(config_text=self_service_config(roots))
    carol = users.carol
    carols = fresh_dir(roots, "carol-", carol)
    outside = fresh_dir(test_root, "carol-outside-", carol)
    roots_own = fresh_dir(roots, "root-owned-")
    alices = fresh_dir(roots, "alice-", users.alice)
    (roots / "carol-link").symlink_to(roots_own)
    os.lchown(roots / "carol-link", carol.uid, carol.gid)
    view.ok(f"attach data {trees.source} allow={users.alice.name}:rw")
    before = _frozen(view)
    commands = {
        f"attach x {roots_own}": {"EACCES"},
        f"attach x {alices}": {"EACCES"},
        f"attach x {outside}": {"EACCES"},
        f"attach x {trees.source}": {"EACCES"},
        f"attach x {roots}/carol-link": {"ELOOP"},
        f"attach x {carols} owner={users.alice.name}": {"EACCES"},
        f"attach x {carols} owner=root": {"EACCES"},
        f"attach data {carols}": {"EEXIST", "EACCES", "ENOENT"},
        f"attach data {trees.source} holder=h": {"EACCES"},
        "mount x tmpfs none": {"EPERM"},
        "hold data h": {"EACCES", "ENOENT"},
        f"set data allow={carol.name}:rw": {"ENOENT"},
        "detach data force": {"ENOENT"},
    }
    wrong = unexpected_answers(view.path, carol, commands)
    assert not wrong, wrong
    assert _frozen(view) == before
    # Self service works for what carol owns; giving it away still does not.
    reply = ctl_as(carol, view.path, f"attach mine {carols}")
    assert reply.errno is None, reply.raw
    table = view.mounts_json()
    wrong = unexpected_answers(view.path, carol, {
        f"set mine owner={users.alice.name}": {"EACCES"},
        "set mine owner=root": {"EACCES"},
        f"attach mine2 {carols} owner={users.alice.name}": {"EACCES"},
    })
    assert not wrong, wrong
    assert view.mounts_json() == table
