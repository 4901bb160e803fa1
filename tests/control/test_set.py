"""`set NAME [ro|rw] [owner=USER] [allow=LIST]` (SPEC 4) and self service (SPEC 5, control
side): policy changes act at once, persist, and non-admins manage only their own subtrees.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.control import make_dir, names_listed, record_of, refused
from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import self_service_config
from tests.support.users import Users, listing_as


@pytest.mark.timeout(60)
def test_set_ro_and_rw_take_effect_at_once(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    (view.path / "data" / "a").write_text("a")
    view.ok("set data ro")
    assert record_of(view.mounts_json(), "data")["ro"] is True
    with pytest.raises(OSError) as ro:
        (view.path / "data" / "b").write_text("b")
    assert ro.value.errno == errno.EROFS
    view.ok("set data rw")
    (view.path / "data" / "b").write_text("b")
    assert sorted(os.listdir(source)) == ["a", "b"]


@pytest.mark.timeout(60)
def test_set_owner_and_allow_persist_across_restart(
    view: ViewHandle, source: Path, users: Users
) -> None:
    view.ok(f"attach data {source}")
    assert listing_as(users.bob, view.path) == [".fusemount"]
    view.ok(f"set data owner={users.alice.name} allow={users.bob.name}:ro ro")
    record = record_of(view.mounts_json(), "data")
    assert (record["owner"], record["ro"]) == (users.alice.uid, True)
    assert listing_as(users.bob, view.path) == [".fusemount", "data"]
    view.restart()
    record = record_of(view.mounts_json(), "data")
    assert (record["owner"], record["ro"]) == (users.alice.uid, True)
    assert listing_as(users.bob, view.path) == [".fusemount", "data"]
    assert listing_as(users.carol, view.path) == [".fusemount"]
    view.ok("set data allow=")
    assert listing_as(users.bob, view.path) == [".fusemount"]


@pytest.mark.timeout(60)
def test_refused_set_changes_nothing(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source} allow=*:ro")
    refused(view, "set data owner=fmt_nosuchuser", errno.EINVAL)
    refused(view, "set data ro rw", errno.EINVAL)
    refused(view, "set data allow=*:rw", errno.EINVAL)
    refused(view, "set data ro allow=bad", errno.EINVAL)
    assert record_of(view.mounts_json(), "data")["ro"] is False


@pytest.mark.timeout(60)
def test_self_service_users_manage_only_their_own(
    view_factory: ViewFactory, scratch: Path, users: Users
) -> None:
    alice, bob = users.alice, users.bob
    hers = make_dir(scratch, "hers", owner=alice)
    view = view_factory(self_service_config(scratch))
    reply = ctl_as(alice, view.path, f"attach hers {hers}")
    assert reply.errno is None, reply.describe("attach")
    # Hidden from bob: it must look missing, not forbidden.
    refused(view, "detach hers", errno.ENOENT, bob)
    refused(view, "set hers ro", errno.ENOENT, bob)
    # Visible to bob but still not his.
    reply = ctl_as(alice, view.path, f"set hers allow={bob.name}:ro")
    assert reply.errno is None, reply.describe("set allow")
    refused(view, "detach hers", errno.EACCES, bob)
    refused(view, "set hers rw", errno.EACCES, bob)
    # Non-admins cannot hand a subtree to someone else, nor touch holders.
    refused(view, f"set hers owner={bob.name}", errno.EACCES, alice)
    refused(view, "hold hers H1", errno.EACCES, alice)
    refused(view, "mount t tmpfs none", errno.EPERM, alice)
    reply = ctl_as(alice, view.path, "set hers ro")
    assert reply.errno is None, reply.describe("set ro")
    reply = ctl_as(alice, view.path, "detach hers")
    assert reply.errno is None, reply.describe("detach")
    assert names_listed(view.path) == set()
