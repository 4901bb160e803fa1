"""Refused `mount` commands change nothing and mount nothing (SPEC 4 errors, SPEC 5).

Options that would undo nosuid,nodev,noexec-by-choice, or that the filesystem does not know,
are EINVAL; a caller who is not an admin, or a type outside access.mount_fstypes, is EPERM.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.mounts import loop_devices_of, statvfs_flags_of_mount
from tests.support.users import Users

HOSTILE_OPTIONS = ["suid", "dev", "exec", "size=8m,suid", "nosuid,dev", "bogus_option=1"]


def _assert_refused_unchanged(view: ViewHandle, command: str, expected: int) -> None:
    before = view.mounts_json()
    reply = view.ctl(command)
    assert reply.errno == expected, reply.describe(command)
    assert reply.data.get("ok") is False, reply.describe(command)
    assert reply.data.get("errno") == errno.errorcode[expected], reply.describe(command)
    assert view.mounts_json() == before, f"{command!r} was refused but changed the table"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", HOSTILE_OPTIONS)
def test_mount_tmpfs_hostile_option_is_einval_and_mounts_nothing(
    view: ViewHandle, options: str
) -> None:
    _assert_refused_unchanged(view, f"mount x tmpfs none options={options}", errno.EINVAL)
    assert not (view.path / "x").exists()
    assert sorted(os.listdir(view.path)) == [".fusemount"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", ["suid", "dev", "exec", "bogus_option=1"])
def test_mount_image_hostile_option_is_einval_and_binds_no_loop(
    image: Path, view: ViewHandle, options: str
) -> None:
    _assert_refused_unchanged(view, f"mount x ext4 {image} options={options}", errno.EINVAL)
    assert not (view.path / "x").exists()
    assert loop_devices_of(image) == [], "a refused mount left its loop device bound"


@pytest.mark.timeout(60)
def test_mount_ro_with_rw_option_is_refused_or_stays_read_only(view: ViewHandle) -> None:
    reply = view.ctl("mount x tmpfs none ro options=rw")
    if reply.errno is not None:
        assert reply.errno == errno.EINVAL, reply.describe("mount ... ro options=rw")
        assert view.mounts_json() == []
        return
    pid = view.pid
    dev = reply.data.get("dev")
    assert isinstance(dev, int)
    assert statvfs_flags_of_mount(pid, dev) & os.ST_RDONLY
    with pytest.raises(OSError) as failed:
        (view.path / "x" / "f").write_bytes(b"x")
    assert failed.value.errno == errno.EROFS
    view.ok("detach x")


@pytest.mark.timeout(60)
def test_mount_by_non_admin_is_eperm(users: Users, view: ViewHandle) -> None:
    before = view.mounts_json()
    reply = ctl_as(users.alice, view.path, "mount x tmpfs none")
    assert reply.errno == errno.EPERM, reply.describe("mount x tmpfs none")
    assert reply.data.get("errno") == "EPERM"
    assert view.mounts_json() == before
    assert not (view.path / "x").exists()


@pytest.mark.timeout(60)
def test_mount_of_own_image_by_non_admin_is_eperm_and_binds_no_loop(
    users: Users, image: Path, view: ViewHandle
) -> None:
    os.chown(image, users.alice.uid, users.alice.gid)
    reply = ctl_as(users.alice, view.path, f"mount x ext4 {image}")
    assert reply.errno == errno.EPERM, reply.describe("mount x ext4 IMAGE")
    assert view.mounts_json() == []
    assert loop_devices_of(image) == []


@pytest.mark.timeout(60)
def test_mount_by_configured_admin_group_member_works(
    users: Users, view_factory: ViewFactory
) -> None:
    view = view_factory(config_text=f'[access]\nadmins = ["root", "@{users.admins.name}"]\n')
    reply = ctl_as(users.dave, view.path, "mount d1 tmpfs none options=size=8m")
    assert reply.errno is None, reply.describe("mount d1 tmpfs none")
    [record] = view.mounts_json()
    assert record["name"] == "d1" and record["owner"] == users.dave.uid
    view.ok("detach d1")


@pytest.mark.timeout(60)
def test_mount_fstype_outside_default_mount_fstypes_is_eperm(view: ViewHandle) -> None:
    _assert_refused_unchanged(view, "mount x ramfs none", errno.EPERM)
    _assert_refused_unchanged(view, "mount x proc none", errno.EPERM)
    assert sorted(os.listdir(view.path)) == [".fusemount"]


@pytest.mark.timeout(60)
def test_mount_fstype_outside_configured_mount_fstypes_is_eperm(
    image: Path, view_factory: ViewFactory
) -> None:
    view = view_factory(config_text='[access]\nmount_fstypes = ["tmpfs"]\n')
    _assert_refused_unchanged(view, f"mount x ext4 {image}", errno.EPERM)
    assert loop_devices_of(image) == []
    view.ok("mount t tmpfs none")  # what is listed still works
    view.ok("detach t")
