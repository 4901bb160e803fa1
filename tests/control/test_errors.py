"""The SPEC 4 "Errors" table row by row, through a real view: each refusal carries its errno
on the write and in the reply, and changes neither mounts.json nor the state file.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.control import make_dir, names_listed, record_of, refused
from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.dirs import SourceFactory
from tests.support.permissions import self_service_config
from tests.support.users import Users


@pytest.mark.timeout(60)
def test_enoent_for_missing_subtree_source_or_holder(view: ViewHandle, source: Path) -> None:
    for command in (
        "detach nosuch",
        "detach nosuch force",
        "hold nosuch h1",
        "release nosuch h1",
        "set nosuch ro",
    ):
        refused(view, command, errno.ENOENT)
    refused(view, f"attach data {source}/missing", errno.ENOENT)
    refused(view, f"attach data {source}/missing/deeper", errno.ENOENT)
    view.ok(f"attach data {source} holder=h1")
    refused(view, "release data h2", errno.ENOENT)
    assert record_of(view.mounts_json(), "data")["holders"] == ["h1"]


@pytest.mark.timeout(60)
def test_eexist_when_name_is_taken_by_another_source(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    first, second = new_source(), new_source()
    view.ok(f"attach data {first}")
    refused(view, f"attach data {second}", errno.EEXIST)
    refused(view, f"attach data {second} holder=h1", errno.EEXIST)
    refused(view, f"attach data {second} ro", errno.EEXIST)
    assert record_of(view.mounts_json(), "data")["source"] == str(first)


@pytest.mark.timeout(60)
def test_enotdir_when_source_is_not_a_directory(view: ViewHandle, source: Path) -> None:
    (source / "file").write_text("x")
    refused(view, f"attach data {source}/file", errno.ENOTDIR)
    refused(view, f"attach data {source}/file/below", errno.ENOTDIR)
    os.mkfifo(source / "fifo")
    refused(view, f"attach data {source}/fifo", errno.ENOTDIR)


@pytest.mark.timeout(60)
def test_eloop_when_a_symlink_is_met_in_the_source_path(view: ViewHandle, source: Path) -> None:
    real = make_dir(source, "real")
    make_dir(real, "inner")
    (source / "link").symlink_to(real)
    (source / "abs").symlink_to("/")
    refused(view, f"attach data {source}/link", errno.ELOOP)
    refused(view, f"attach data {source}/link/inner", errno.ELOOP)
    refused(view, f"attach data {source}/abs/tmp", errno.ELOOP)
    refused(view, "attach data /proc/self/cwd", errno.ELOOP)
    view.ok(f"attach data {source}/real/inner")


@pytest.mark.timeout(60)
def test_eacces_for_source_outside_source_roots(
    view_factory: ViewFactory, new_source: SourceFactory, scratch: Path
) -> None:
    allowed = make_dir(scratch, "allowed")
    inside = make_dir(allowed, "inside")
    outside = new_source()
    view = view_factory(f'[access]\nsource_roots = ["{allowed}"]\n')
    refused(view, f"attach data {outside}", errno.EACCES)
    refused(view, f"attach data {allowed}/../{outside.name}", errno.EACCES)
    refused(view, f"attach data {scratch}", errno.EACCES)
    # A path that only looks like it is under the root, by string prefix.
    sibling = make_dir(scratch, "allowed-not")
    refused(view, f"attach data {sibling}", errno.EACCES)
    view.ok(f"attach data {inside}")
    view.ok(f"attach top {allowed}")


@pytest.mark.timeout(60)
def test_eacces_for_non_admin_commands(
    view: ViewHandle, source: Path, users: Users, new_source: SourceFactory
) -> None:
    alice = users.alice
    view.ok(f"attach shared {source} allow={alice.name}:rw")
    mine = new_source()
    os.chown(mine, alice.uid, alice.gid)
    refused(view, f"attach other {mine}", errno.EACCES, alice)
    refused(view, "detach shared", errno.EACCES, alice)
    refused(view, "hold shared h1", errno.EACCES, alice)
    refused(view, "release shared h1", errno.EACCES, alice)
    refused(view, "set shared rw", errno.EACCES, alice)
    # dave is an admin only once access.admins names his group; by default he is not.
    refused(view, f"attach other {mine}", errno.EACCES, users.dave)


@pytest.mark.timeout(60)
def test_group_admin_may_run_commands(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view = view_factory(f'[access]\nadmins = ["root", "@{users.admins.name}"]\n')
    reply = ctl_as(users.dave, view.path, f"attach data {source}")
    assert reply.errno is None and reply.data.get("ok") is True, reply.describe("attach")
    refused(view, "detach data", errno.EACCES, users.alice)
    reply = ctl_as(users.dave, view.path, "detach data")
    assert reply.errno is None, reply.describe("detach")
    assert names_listed(view.path) == set()


@pytest.mark.timeout(60)
def test_eacces_when_self_service_caller_may_not_read_source(
    view_factory: ViewFactory, scratch: Path, users: Users
) -> None:
    alice = users.alice
    closed = make_dir(scratch, "closed", 0o000, alice)
    not_hers = make_dir(scratch, "roots")
    view = view_factory(self_service_config(scratch, per_user=8))
    refused(view, f"attach mine {closed}", errno.EACCES, alice)
    refused(view, f"attach mine {not_hers}", errno.EACCES, alice)
    # Outside self_service_roots, even a directory she owns.
    elsewhere = make_dir(scratch.parent, f"{scratch.name}-elsewhere", owner=alice)
    try:
        refused(view, f"attach mine {elsewhere}", errno.EACCES, alice)
        # Self service cannot give a subtree away.
        ok_dir = make_dir(scratch, "open", owner=alice)
        refused(view, f"attach mine {ok_dir} owner={users.bob.name}", errno.EACCES, alice)
        reply = ctl_as(alice, view.path, f"attach mine {ok_dir}")
        assert reply.errno is None, reply.describe("attach")
        assert record_of(view.mounts_json(), "mine")["owner"] == alice.uid
    finally:
        elsewhere.rmdir()


@pytest.mark.timeout(60)
def test_eperm_for_fstype_not_allowed(view_factory: ViewFactory, source: Path) -> None:
    view = view_factory('[access]\nfstypes = ["xfs"]\nmount_fstypes = ["tmpfs"]\n')
    message = refused(view, f"attach data {source}", errno.EPERM)
    assert "fstypes" in message
    refused(view, "mount scratch ext4 none", errno.EPERM)
    refused(view, "mount scratch squashfs none", errno.EPERM)


@pytest.mark.timeout(60)
def test_mount_of_a_directory_is_einval(view: ViewHandle, source: Path) -> None:
    # A mount SOURCE is a device, an image file or `none` (SPEC 4): a directory is none of
    # them, an invalid argument, whatever the open() of it happened to say.
    refused(view, f"mount scratch ext4 {source}", errno.EINVAL)
    refused(view, f"mount scratch tmpfs {source}", errno.EINVAL)


@pytest.mark.timeout(60)
def test_eperm_for_mount_by_non_admin(view: ViewHandle, users: Users) -> None:
    refused(view, "mount scratch tmpfs none", errno.EPERM, users.alice)


@pytest.mark.timeout(60)
def test_enospc_for_subtrees_and_holders(
    view_factory: ViewFactory, new_source: SourceFactory
) -> None:
    view = view_factory("[limits]\nmax_subtrees = 1\nmax_holders = 1\n")
    src = new_source()
    view.ok(f"attach data {src} holder=h1")
    refused(view, f"attach more {new_source()}", errno.ENOSPC)
    refused(view, "hold data h2", errno.ENOSPC)
    refused(view, f"attach data {src} holder=h2", errno.ENOSPC)


@pytest.mark.timeout(60)
def test_edquot_for_self_service_user_over_cap(
    view_factory: ViewFactory, scratch: Path, users: Users
) -> None:
    alice = users.alice
    dirs = [make_dir(scratch, f"a{i}", owner=alice) for i in range(3)]
    view = view_factory(self_service_config(scratch, per_user=2))
    for i in range(2):
        reply = ctl_as(alice, view.path, f"attach a{i} {dirs[i]}")
        assert reply.errno is None, reply.describe("attach")
    message = refused(view, f"attach a2 {dirs[2]}", errno.EDQUOT, alice)
    assert "max_subtrees_per_user" in message


@pytest.mark.timeout(60)
def test_ebusy_for_detach_with_open_file(view: ViewHandle, source: Path) -> None:
    (source / "f").write_text("data")
    view.ok(f"attach data {source}")
    with open(view.path / "data" / "f", "rb") as f:
        refused(view, "detach data", errno.EBUSY)
        assert f.read() == b"data"
    fd = os.open(view.path / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        refused(view, "detach data", errno.EBUSY)
    finally:
        os.close(fd)
    view.ok("detach data")
    assert names_listed(view.path) == set()
