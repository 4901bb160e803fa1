"""The view root and `.fusemount/` are immutable, for root too (SPEC 3, 4).

Subtrees come and go only through control commands: nothing is created, removed or renamed in
the root (EACCES), and the control folder and its files cannot be created, removed, renamed or
chmod'ed (EACCES or EPERM). Each test checks that the table and the listings did not move.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.escape import Trees, outcomes, snapshot
from tests.support.users import Users, py_as


@pytest.mark.timeout(60)
def test_names_in_view_root_cannot_be_made_removed_or_renamed_by_root(
    view: ViewHandle, trees: Trees
) -> None:
    before = snapshot(trees.source)
    view.ok(f"attach data {trees.source}")
    table = view.mounts_json()
    v = view.path
    got = outcomes({
        "mkdir": lambda: os.mkdir(v / "new"),
        "create": lambda: os.close(os.open(v / "new", os.O_CREAT | os.O_WRONLY, 0o644)),
        "create excl": lambda: os.close(os.open(v / "new", os.O_CREAT | os.O_EXCL, 0o644)),
        "symlink": lambda: os.symlink("data", v / "new"),
        "mkfifo": lambda: os.mkfifo(v / "new"),
        "link from subtree": lambda: os.link(v / "data" / "hello.txt", v / "new"),
        "rename subtree root": lambda: os.rename(v / "data", v / "other"),
        "rename file into root": lambda: os.rename(v / "data" / "hello.txt", v / "new"),
        "rename root entry into subtree": lambda: os.rename(v / "data", v / "data" / "x"),
        "rmdir subtree root": lambda: os.rmdir(v / "data"),
        "rename dir into root": lambda: os.rename(v / "data" / "sub", v / "data2"),
        "rename dir over .fusemount": lambda: os.rename(v / "data" / "sub", v / ".fusemount"),
    })
    expected = dict.fromkeys(got, "EACCES")
    # Moving a directory into one of its own descendants is refused by the VFS first.
    expected["rename root entry into subtree"] = got["rename root entry into subtree"]
    assert got["rename root entry into subtree"] in ("EACCES", "EINVAL")
    assert got == expected
    assert sorted(os.listdir(v)) == [".fusemount", "data"]
    assert view.mounts_json() == table
    assert snapshot(trees.source) == before


@pytest.mark.timeout(60)
def test_control_folder_and_files_cannot_be_removed_renamed_or_chmodded(
    view: ViewHandle,
) -> None:
    c = view.path / ".fusemount"
    files = sorted(os.listdir(c))
    modes = {name: stat.S_IMODE(os.stat(c / name).st_mode) for name in files}
    got = outcomes({
        "rmdir .fusemount": lambda: os.rmdir(c),
        "rename .fusemount": lambda: os.rename(c, view.path / "ctl2"),
        "chmod .fusemount": lambda: os.chmod(c, 0o777),
        "chown .fusemount": lambda: os.chown(c, 1234, 1234),
        "unlink ctl": lambda: os.unlink(c / "ctl"),
        "rename ctl": lambda: os.rename(c / "ctl", c / "ctl2"),
        "rename ctl out": lambda: os.rename(c / "ctl", view.path / "ctl"),
        "rename over version": lambda: os.rename(c / "mounts", c / "version"),
        "chmod ctl": lambda: os.chmod(c / "ctl", 0o777),
        "chmod mounts": lambda: os.chmod(c / "mounts", 0o666),
        "chmod version u+s": lambda: os.chmod(c / "version", 0o4755),
        "chown mounts": lambda: os.chown(c / "mounts", 1234, 1234),
        "create in .fusemount": lambda: os.close(os.open(c / "new", os.O_CREAT | os.O_WRONLY)),
        "mkdir in .fusemount": lambda: os.mkdir(c / "new"),
        "symlink in .fusemount": lambda: os.symlink("ctl", c / "new"),
        "link ctl": lambda: os.link(c / "ctl", c / "ctl2"),
        "write mounts": lambda: os.close(os.open(c / "mounts", os.O_WRONLY)),
        "write version": lambda: os.close(os.open(c / "version", os.O_WRONLY)),
    })
    refused = {what: code for what, code in got.items() if code not in ("EACCES", "EPERM")}
    assert not refused, f"control objects changed or wrong errno: {refused}"
    assert sorted(os.listdir(c)) == files
    assert {n: stat.S_IMODE(os.stat(c / n).st_mode) for n in files} == modes
    assert {os.stat(c / n).st_uid for n in files} == {0}
    assert sorted(os.listdir(view.path)) == [".fusemount"]
    assert (c / "version").read_text().startswith("fusemount ")


@pytest.mark.timeout(60)
def test_view_root_is_immutable_for_an_admin_user(
    view_factory: ViewFactory, trees: Trees, users: Users
) -> None:
    view = view_factory(config_text=f'[access]\nadmins = ["@{users.admins.name}"]\n')
    view.ok(f"attach data {trees.source} allow={users.dave.name}:rw")
    v = str(view.path)
    got = py_as(users.dave, f"""
v = {v!r}
print(json.dumps({{
    "mkdir": errno_of(lambda: os.mkdir(v + "/new")),
    "create": errno_of(lambda: os.close(os.open(v + "/new", os.O_CREAT | os.O_WRONLY))),
    "rename": errno_of(lambda: os.rename(v + "/data", v + "/new")),
    "rmdir": errno_of(lambda: os.rmdir(v + "/data")),
    "unlink ctl": errno_of(lambda: os.unlink(v + "/.fusemount/ctl")),
}}))
""")
    assert isinstance(got, dict)
    # dave is an admin but not root: the kernel refuses first (root dir 0755, owned by root).
    assert all(code in ("EACCES", "EPERM") for code in got.values()), got
    assert sorted(os.listdir(Path(v))) == [".fusemount", "data"]


@pytest.mark.timeout(60)
def test_control_files_cannot_be_linked_or_moved_into_a_subtree(
    view: ViewHandle, trees: Trees
) -> None:
    """A hard link of `ctl` inside a subtree would be a control object under a source's
    grants; it is refused like any cross-subtree link (EXDEV) or as a change to the control
    folder (EACCES/EPERM), never by a stale-handle error about an inode the daemon forgot."""
    before = snapshot(trees.source)
    view.ok(f"attach data {trees.source}")
    v, c = view.path, view.path / ".fusemount"
    got = outcomes({
        "link ctl into subtree": lambda: os.link(c / "ctl", v / "data" / "ctl"),
        "link version into subtree": lambda: os.link(c / "version", v / "data" / "sub" / "v"),
        "rename ctl into subtree": lambda: os.rename(c / "ctl", v / "data" / "ctl"),
        "link file into .fusemount": lambda: os.link(v / "data" / "hello.txt", c / "x"),
        "rename file over version": lambda: os.rename(v / "data" / "hello.txt", c / "version"),
    })
    wrong = {what: code for what, code in got.items() if code not in ("EXDEV", "EACCES", "EPERM")}
    assert not wrong, wrong
    assert snapshot(trees.source) == before
    assert sorted(os.listdir(c)) == ["ctl", "metrics", "mounts", "mounts.json", "version"]
