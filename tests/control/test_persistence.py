"""The state file across restarts (SPEC 8): subtrees, holders and policies come back; the file
is JSON after every command; a source replaced between runs comes back failed, not attached,
until an admin detaches or re-attaches it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.control import (
    make_dir,
    names_listed,
    record_of,
    replace_dir,
    state_doc,
    state_table,
    unexpected_log_lines,
)
from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.dirs import SourceFactory
from tests.support.permissions import self_service_config
from tests.support.users import Users, listing_as

# What must survive a restart unchanged, per mounts.json record.
_KEPT = ("name", "kind", "source", "state", "ro", "owner", "allow", "holders", "dev", "ino")
# The daemon warns about a subtree it could not re-attach; that is expected here.
_EXPECTED_WARNINGS = ("not attached",)


def _kept(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{key: r.get(key) for key in _KEPT} for r in records]


@pytest.mark.timeout(60)
def test_restart_keeps_subtrees_holders_and_policies(
    view: ViewHandle, new_source: SourceFactory, users: Users
) -> None:
    alice, bob = users.alice, users.bob
    plain, shared, held = new_source(), new_source(), new_source()
    (shared / "f").write_text("shared")
    view.ok(f"attach plain {plain}")
    grants = f"{bob.name}:ro,@{users.team.name}:rw"
    view.ok(f"attach shared {shared} ro owner={alice.name} allow={grants}")
    view.ok(f"attach held {held} holder=H1")
    view.ok("hold held H2")
    view.ok("hold plain P1")
    before = view.mounts_json()
    assert record_of(before, "shared")["owner"] == alice.uid
    view.restart()
    after = view.mounts_json()
    assert _kept(after) == _kept(before)
    assert names_listed(view.path) == {"plain", "shared", "held"}
    assert (view.path / "shared" / "f").read_text() == "shared"
    # The policies act, not just show: carol sees nothing, bob reads, ro stays ro.
    assert "shared" not in listing_as(users.carol, view.path)
    assert "shared" in listing_as(bob, view.path)
    assert "shared" in listing_as(alice, view.path)
    with pytest.raises(OSError) as ro:
        (view.path / "shared" / "new").write_text("x")
    assert ro.value.errno == errno.EROFS
    # Holder semantics survive too: held was created with a holder, plain was not.
    view.ok("release held H1")
    view.ok("release held H2")
    view.ok("release plain P1")
    assert names_listed(view.path) == {"plain", "shared"}


@pytest.mark.timeout(60)
def test_restart_keeps_what_users_see(
    view: ViewHandle, new_source: SourceFactory, users: Users
) -> None:
    open_to_bob, hidden = new_source(), new_source()
    view.ok(f"attach forbob {open_to_bob} allow={users.bob.name}:ro")
    view.ok(f"attach hidden {hidden}")
    view.restart()
    assert listing_as(users.bob, view.path) == [".fusemount", "forbob"]
    assert listing_as(users.carol, view.path) == [".fusemount"]


@pytest.mark.timeout(60)
def test_state_file_is_json_after_every_command(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    src = new_source()
    commands = [
        f"attach a {src}",
        f"attach b {new_source()} ro holder=h1",
        "hold b h2",
        "set a ro",
        f"attach c {new_source()} allow=*:ro",
        "release b h1",
        "detach c",
        "set a rw",
        "release b h2",
        "detach a",
    ]
    for command in commands:
        view.ok(command)
        doc = state_doc(view.state)
        assert isinstance(doc.get("subtrees"), list), doc
    assert state_table(view.state) == {}
    # Readable by root only (it names every source); replaced by rename, no temporaries left.
    assert os.stat(view.state).st_mode & 0o077 == 0
    leftovers = [p.name for p in view.state.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []


def _restarted_with_source_replaced(view: ViewHandle, name: str, source: Path) -> dict[str, object]:
    """Stop the daemon, put a new directory (holding `new`) at the path of subtree name's
    source, start again: the subtree must come back failed. Returns its record."""
    view.daemon.stop()
    replace_dir(source)
    (source / "new").write_text("new")
    view.start_again()
    record = record_of(view.mounts_json(), name)
    assert record["state"] == "failed", record
    return record


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_replaced_source_comes_back_failed_and_not_attached(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    keep, swapped = new_source(), new_source()
    (swapped / "old").write_text("old")
    view.ok(f"attach keep {keep}")
    view.ok(f"attach swapped {swapped} holder=H1")
    failed = _restarted_with_source_replaced(view, "swapped", swapped)
    assert isinstance(failed["reason"], str) and failed["reason"]
    assert record_of(view.mounts_json(), "keep")["state"] == "attached"
    assert names_listed(view.path) == {"keep"}
    with pytest.raises(FileNotFoundError):
        os.stat(view.path / "swapped")
    # Still failed after another restart: nothing was silently re-attached or dropped.
    view.restart()
    assert record_of(view.mounts_json(), "swapped")["state"] == "failed"
    assert names_listed(view.path) == {"keep"}
    assert state_table(view.state)["swapped"] == ["H1"]
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_admin_detaches_failed_entry(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    _restarted_with_source_replaced(view, "data", source)
    view.ok("detach data")
    assert view.mounts_json() == []
    assert state_table(view.state) == {}
    view.restart()
    assert view.mounts_json() == []
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_admin_reattaches_failed_entry(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    _restarted_with_source_replaced(view, "data", source)
    reply = view.ok(f"attach data {source}")
    assert (reply["dev"], reply["ino"]) == (os.stat(source).st_dev, os.stat(source).st_ino)
    assert record_of(view.mounts_json(), "data")["state"] == "attached"
    assert (view.path / "data" / "new").read_text() == "new"
    view.restart()
    assert record_of(view.mounts_json(), "data")["state"] == "attached"
    assert names_listed(view.path) == {"data"}
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_removed_source_comes_back_failed(view_factory: ViewFactory, source: Path) -> None:
    view = view_factory()
    (source / "gone").mkdir()
    view.ok(f"attach gone {source}/gone")
    view.daemon.stop()
    (source / "gone").rmdir()
    view.start_again()
    failed = record_of(view.mounts_json(), "gone")
    assert failed["state"] == "failed" and failed["reason"]
    assert names_listed(view.path) == set()
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_restart_runs_every_check_again(
    view: ViewHandle, new_source: SourceFactory, scratch: Path
) -> None:
    allowed = make_dir(scratch, "allowed")
    inside = make_dir(allowed, "inside")
    outside = new_source()
    view.ok(f"attach inside {inside}")
    view.ok(f"attach outside {outside}")
    view.restart(f'[access]\nsource_roots = ["{allowed}"]\n')
    records = view.mounts_json()
    assert record_of(records, "inside")["state"] == "attached"
    failed = record_of(records, "outside")
    assert failed["state"] == "failed" and failed["reason"]
    assert names_listed(view.path) == {"inside"}
    # Put back under no roots, the same source passes again.
    view.restart("")
    assert record_of(view.mounts_json(), "outside")["state"] == "attached"
    assert names_listed(view.path) == {"inside", "outside"}
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


@pytest.mark.timeout(60)
def test_restart_restores_self_service_and_mount_subtrees(
    view_factory: ViewFactory, scratch: Path, users: Users
) -> None:
    alice = users.alice
    hers = make_dir(scratch, "hers", owner=alice)
    view = view_factory(self_service_config(scratch))
    reply = ctl_as(alice, view.path, f"attach hers {hers}")
    assert reply.errno is None, reply.describe("attach")
    view.ok("mount scratch tmpfs none options=size=1m holder=H1")
    view.restart()
    records = view.mounts_json()
    assert record_of(records, "hers")["state"] == "attached"
    assert record_of(records, "hers")["owner"] == alice.uid
    assert record_of(records, "scratch")["state"] == "attached"
    assert record_of(records, "scratch")["holders"] == ["H1"]
    assert names_listed(view.path) == {"hers", "scratch"}
    (view.path / "scratch" / "f").write_text("x")
    assert (view.path / "scratch" / "f").read_text() == "x"
