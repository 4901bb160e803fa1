"""Device nodes, set-ID bits and mount flags: the view must never become a privilege source.

SPEC 2: the view is mounted nosuid,nodev, type fuse.fusemount, fsname fusemount. SPEC 3: with
access.deny_special_files = true, block and character device nodes (whiteouts included) are
never created (EPERM), and set-user-ID/set-group-ID bits are never set on a regular file
through the view (EPERM), root included. Without it they follow native rules per caller
(tests/permissions/test_special_files.py); a set-ID or device file is never honoured through
the view either way.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.escape import (
    RENAME_WHITEOUT,
    Trees,
    errno_of,
    name_of,
    outcomes,
    rename_paths,
    snapshot,
)
from tests.support.users import Users, py_as, run_as


@pytest.fixture
def deny_view(view_factory: ViewFactory) -> ViewHandle:
    """A view that refuses special files (access.deny_special_files = true)."""
    return view_factory(config_text="[access]\ndeny_special_files = true\n")


def _no_device_or_setid(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), (
                f"device node {name} reached the source")
            if stat.S_ISREG(st.st_mode):
                assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (
                    f"set-ID bit on {name} reached the source")


@pytest.mark.timeout(60)
def test_device_nodes_created_through_view_fail_eperm_even_for_root(
    deny_view: ViewHandle, trees: Trees
) -> None:
    deny_view.ok(f"attach data {trees.source}")
    d = deny_view.path / "data"
    got = outcomes({
        "char 1:3": lambda: os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
        "char 1:1 (mem)": lambda: os.mknod(d / "mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)),
        "block 7:0": lambda: os.mknod(d / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0)),
        "whiteout 0:0": lambda: os.mknod(d / "wh", stat.S_IFCHR, os.makedev(0, 0)),
        "block in subdir": lambda: os.mknod(d / "sub" / "sda", stat.S_IFBLK | 0o600,
                                            os.makedev(8, 0)),
    })
    assert got == dict.fromkeys(got, "EPERM")
    _no_device_or_setid(trees.source)


@pytest.mark.timeout(60)
def test_rename_whiteout_through_view_leaves_no_device_node(
    deny_view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    deny_view.ok(f"attach data {trees.source}")
    d = deny_view.path / "data"
    code = errno_of(lambda: rename_paths(d / "hello.txt", d / "moved", RENAME_WHITEOUT))
    assert code in (errno.EINVAL, errno.EPERM), name_of(code)
    assert snapshot(trees.source) == before
    _no_device_or_setid(trees.source)


@pytest.mark.timeout(60)
def test_setid_bits_on_regular_file_through_view_fail_eperm_even_for_root(
    deny_view: ViewHandle, trees: Trees
) -> None:
    deny_view.ok(f"attach data {trees.source}")
    d = deny_view.path / "data"
    f = d / "hello.txt"
    got = outcomes({
        "chmod u+s": lambda: os.chmod(f, 0o4755),
        "chmod g+s": lambda: os.chmod(f, 0o2755),
        "chmod ug+s": lambda: os.chmod(f, 0o6755),
        "chmod u+s by fd": lambda: _fchmod(f, 0o4644),
        "create 04755": lambda: os.close(os.open(d / "c1", os.O_CREAT | os.O_WRONLY, 0o4755)),
        "create 02755": lambda: os.close(os.open(d / "c2", os.O_CREAT | os.O_WRONLY
                                                 | os.O_EXCL, 0o2755)),
        "mknod 04755": lambda: os.mknod(d / "c3", stat.S_IFREG | 0o4755),
    })
    assert got == dict.fromkeys(got, "EPERM")
    assert not {"c1", "c2", "c3"} & set(os.listdir(trees.source))
    _no_device_or_setid(trees.source)


def _fchmod(path: Path, mode: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_setid_bits_on_own_file_through_view_fail_eperm_for_a_user(
    deny_view: ViewHandle, trees: Trees, users: Users
) -> None:
    trees.source.chmod(0o777)
    deny_view.ok(f"attach data {trees.source} allow={users.alice.name}:rw")
    d = str(deny_view.path / "data")
    got = py_as(users.alice, f"""
d = {d!r}
fd = os.open(d + "/mine", os.O_CREAT | os.O_WRONLY, 0o755)
os.write(fd, b"#!/bin/sh\\n")
os.close(fd)
print(json.dumps({{
    "chmod u+s": errno_of(lambda: os.chmod(d + "/mine", 0o4755)),
    "chmod g+s": errno_of(lambda: os.chmod(d + "/mine", 0o2755)),
    "create 04755": errno_of(lambda: os.close(os.open(d + "/c1", os.O_CREAT | os.O_WRONLY,
                                                      0o4755))),
    "mode now": oct(os.stat(d + "/mine").st_mode & 0o7777),
}}))
""")
    assert got == {"chmod u+s": "EPERM", "chmod g+s": "EPERM", "create 04755": "EPERM",
                   "mode now": "0o755"}
    _no_device_or_setid(trees.source)


@pytest.mark.timeout(60)
def test_view_is_mounted_nosuid_nodev_with_fusemount_fstype(view: ViewHandle) -> None:
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields = head.split()
            if fields[4] == str(view.path):
                found.append((fields[5].split(","), tail.split()))
    assert len(found) == 1, f"view mounted {len(found)} times"
    mount_opts, (fstype, fsname, super_opts) = found[0]
    assert "nosuid" in mount_opts
    assert "nodev" in mount_opts
    assert fstype == "fuse.fusemount"
    assert fsname == "fusemount"
    assert {"allow_other", "default_permissions"} <= set(super_opts.split(","))


@pytest.mark.timeout(60)
def test_setuid_root_binary_in_source_does_not_elevate_through_view(
    view: ViewHandle, trees: Trees, users: Users
) -> None:
    binary = trees.source / "id"
    shutil.copy2("/usr/bin/id", binary)
    os.chmod(binary, 0o4755)  # natively, on the source: the view must not honour it
    view.ok(f"attach data {trees.source} allow={users.alice.name}:ro")
    result = run_as(users.alice, [str(view.path / "data" / "id"), "-u"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(users.alice.uid), "setuid honoured through the view"


@pytest.mark.timeout(60)
def test_device_node_in_source_cannot_be_opened_through_view(
    view: ViewHandle, trees: Trees
) -> None:
    os.mknod(trees.source / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    view.ok(f"attach data {trees.source}")
    node = view.path / "data" / "null"
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert errno_of(lambda: os.close(os.open(node, os.O_RDONLY))) == errno.EACCES
    assert errno_of(lambda: os.close(os.open(node, os.O_WRONLY))) == errno.EACCES
