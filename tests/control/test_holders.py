"""Holders (SPEC 4 "Holders"): opaque ids that keep a subtree attached.

attach with holder=H on the same source adds H (a repeat is a no-op), on another source is
EEXIST; hold/release add and remove; a subtree created with a holder detaches itself on its
last release, one created without holders stays until `detach`.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.support.control import names_listed, record_of, refused, snapshot, state_table
from tests.support.daemon import ViewHandle
from tests.support.dirs import SourceFactory


def _holders(view: ViewHandle, name: str) -> object:
    return record_of(view.mounts_json(), name)["holders"]


@pytest.mark.timeout(60)
def test_attach_with_same_holder_twice_is_a_no_op(view: ViewHandle, source: Path) -> None:
    first = view.ok(f"attach data {source} holder=H")
    before = snapshot(view)
    again = view.ok(f"attach data {source} holder=H")
    assert snapshot(view) == before
    assert (again["dev"], again["ino"]) == (first["dev"], first["ino"])
    assert _holders(view, "data") == ["H"]


@pytest.mark.timeout(60)
def test_attach_with_new_holder_on_same_source_adds_it(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source} holder=H1")
    reply = view.ok(f"attach data {source} holder=H2")
    assert reply.get("holders") == ["H1", "H2"]
    assert _holders(view, "data") == ["H1", "H2"]
    assert state_table(view.state) == {"data": ["H1", "H2"]}
    # The same source spelt differently is still the same source identity.
    view.ok(f"attach data {source}/./ holder=H3")
    assert _holders(view, "data") == ["H1", "H2", "H3"]


@pytest.mark.timeout(60)
def test_attach_with_holder_on_other_source_is_eexist(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    first, second = new_source(), new_source()
    view.ok(f"attach data {first} holder=H1")
    refused(view, f"attach data {second} holder=H2", errno.EEXIST)
    refused(view, f"attach data {second} holder=H1", errno.EEXIST)
    assert _holders(view, "data") == ["H1"]


@pytest.mark.timeout(60)
def test_hold_and_release_add_and_remove(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    assert _holders(view, "data") == []
    view.ok("hold data vol-1")
    view.ok("hold data vol:2")
    before = snapshot(view)
    view.ok("hold data vol-1")  # repeating a holder is a no-op
    assert snapshot(view) == before
    assert _holders(view, "data") == ["vol-1", "vol:2"]
    view.ok("release data vol-1")
    assert _holders(view, "data") == ["vol:2"]
    assert state_table(view.state) == {"data": ["vol:2"]}
    refused(view, "release data vol-1", errno.ENOENT)


@pytest.mark.timeout(60)
def test_release_of_unknown_holder_is_enoent(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source} holder=H1")
    message = refused(view, "release data H2", errno.ENOENT)
    assert "H2" in message
    refused(view, "release nosuch H1", errno.ENOENT)


@pytest.mark.timeout(60)
def test_subtree_created_with_holder_detaches_on_last_release(
    view: ViewHandle, source: Path
) -> None:
    (source / "f").write_text("x")
    view.ok(f"attach data {source} holder=H1")
    view.ok("hold data H2")
    assert (view.path / "data" / "f").read_text() == "x"
    view.ok("release data H1")
    assert names_listed(view.path) == {"data"}
    view.ok("release data H2")
    assert names_listed(view.path) == set()
    assert view.mounts_json() == []
    assert state_table(view.state) == {}
    assert not (view.path / "data").exists()
    # The name is free again.
    view.ok(f"attach data {source}")


@pytest.mark.timeout(60)
def test_subtree_created_without_holders_stays_after_last_release(
    view: ViewHandle, source: Path
) -> None:
    view.ok(f"attach data {source}")
    view.ok("hold data H1")
    view.ok(f"attach data {source} holder=H2")
    view.ok("release data H1")
    view.ok("release data H2")
    assert names_listed(view.path) == {"data"}
    assert _holders(view, "data") == []
    assert state_table(view.state) == {"data": []}
    view.ok("detach data")
    assert names_listed(view.path) == set()


@pytest.mark.timeout(60)
def test_detach_drops_all_holders(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source} holder=H1")
    view.ok("hold data H2")
    view.ok("detach data")
    assert view.mounts_json() == []
    refused(view, "release data H1", errno.ENOENT)
    # A fresh attach starts with no memory of the old holders.
    view.ok(f"attach data {source}")
    assert _holders(view, "data") == []


@pytest.mark.timeout(60)
def test_holder_ids_use_the_full_alphabet(view: ViewHandle, source: Path) -> None:
    longest = "a" * 128
    view.ok(f"attach data {source} holder=A.b_c:d-9")
    view.ok(f"hold data {longest}")
    assert _holders(view, "data") == ["A.b_c:d-9", longest]
    refused(view, "hold data " + "a" * 129, errno.EINVAL)
    refused(view, "hold data h@1", errno.EINVAL)


@pytest.mark.timeout(60)
def test_mount_holders_follow_the_same_rules(view: ViewHandle, source: Path) -> None:
    view.ok("mount scratch tmpfs none options=size=1m holder=A")
    view.ok("mount scratch tmpfs none options=size=1m holder=B")
    assert _holders(view, "scratch") == ["A", "B"]
    refused(view, f"attach scratch {source} holder=C", errno.EEXIST)
    refused(view, "mount scratch ext4 none holder=C", errno.EEXIST)
    view.ok("release scratch A")
    view.ok("release scratch B")
    assert names_listed(view.path) == set()


@pytest.mark.timeout(60)
def test_reattach_with_other_options_is_eexist_not_silent_issue_15(
    view: ViewHandle, source: Path
) -> None:
    view.ok(f"attach data {source}")
    before = snapshot(view)
    for options in ("ro", "allow=*:ro", "owner=1", "holder=H ro", "holder=H allow=*:ro"):
        assert refused(view, f"attach data {source} {options}", errno.EEXIST)
    assert snapshot(view) == before
    assert _holders(view, "data") == []
    # The identical repeat is still a no-op, and with a holder it only adds the holder.
    view.ok(f"attach data {source}")
    view.ok(f"attach data {source} holder=H")
    assert _holders(view, "data") == ["H"]
    record = record_of(view.mounts_json(), "data")
    assert record.get("ro") in (False, None)


@pytest.mark.timeout(60)
def test_remount_with_other_options_is_eexist_issue_15(view: ViewHandle) -> None:
    view.ok("mount scratch tmpfs none options=size=1m holder=A")
    refused(view, "mount scratch tmpfs none options=size=2m holder=B", errno.EEXIST)
    refused(view, "mount scratch tmpfs none options=size=1m ro holder=B", errno.EEXIST)
    view.ok("mount scratch tmpfs none options=size=1m holder=B")
    assert _holders(view, "scratch") == ["A", "B"]
    view.ok("release scratch A")
    view.ok("release scratch B")
