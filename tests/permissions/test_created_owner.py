"""What a caller creates through the view is the caller's (SPEC 5).

Owner: the caller; group: the caller's primary group, or the parent's when the parent is
set-group-ID (and new directories inherit the bit there); mode: the requested mode minus the
caller's umask. Checked on the backing files with lstat, never through the view.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.permissions import config, make_dir, probe
from tests.support.users import Users, py_as

pytestmark = pytest.mark.needs_root

FILE_MODE = 0o666
DIR_MODE = 0o777
FIFO_MODE = 0o666


def _create_ops(where: Path, tag: str) -> dict[str, str]:
    def at(name: str) -> str:
        return repr(str(where / f"{name}-{tag}"))

    return {
        "file": f"create_file({at('file')}, {FILE_MODE:#o})",
        "dir": f"os.mkdir({at('dir')}, {DIR_MODE:#o})",
        "symlink": f"os.symlink('file-{tag}', {at('symlink')})",
        "fifo": f"os.mkfifo({at('fifo')}, {FIFO_MODE:#o})",
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("umask", [0o027, 0o077, 0o002])
def test_created_objects_belong_to_caller_with_umask_applied(
    view_factory: ViewFactory, source: Path, users: Users, umask: int
) -> None:
    alice = users.alice
    view = view_factory(config_text=config())
    src = make_dir(source / "src", 0o777)
    setgid_dir = make_dir(src / "sg", 0o2775, 0, users.team.gid)
    view.ok(f"attach work {src} owner={alice.name}")
    tag = f"{umask:03o}"
    ops = _create_ops(view.path / "work", tag)
    ops |= {f"sg.{k}": v for k, v in _create_ops(view.path / "work" / "sg", tag).items()}
    got = probe(alice, ops, umask=umask)
    assert got == dict.fromkeys(ops, 0), got

    problems: list[str] = []
    for parent, prefix, gid in ((src, "", alice.gid), (setgid_dir, "sg.", users.team.gid)):
        for kind, requested in (("file", FILE_MODE), ("dir", DIR_MODE), ("fifo", FIFO_MODE),
                                ("symlink", None)):
            st = os.lstat(parent / f"{kind}-{tag}")
            owner = (st.st_uid, st.st_gid)
            if owner != (alice.uid, gid):
                problems.append(f"{prefix}{kind}: owner {owner}, expected {(alice.uid, gid)}")
            if requested is None:
                continue
            expected = requested & ~umask
            if kind == "dir" and prefix:
                expected |= stat.S_ISGID  # inherited from the set-group-ID parent
            if stat.S_IMODE(st.st_mode) != expected:
                problems.append(
                    f"{prefix}{kind}: mode {stat.S_IMODE(st.st_mode):o}, expected {expected:o}"
                )
    assert not problems, f"umask {umask:03o}:\n" + "\n".join(problems)


@pytest.mark.timeout(60)
def test_created_objects_never_owned_by_root_for_group_grantee(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """bob works through a group grant in root's subtree: what he makes is still his."""
    bob = users.bob
    view = view_factory(config_text=config())
    src = make_dir(source / "src", 0o777)
    view.ok(f"attach team {src} allow=@{users.team.name}:rw")
    ops = _create_ops(view.path / "team", "bob")
    ops["rename"] = (
        f"os.rename({str(view.path / 'team' / 'file-bob')!r}, "
        f"{str(view.path / 'team' / 'moved-bob')!r})"
    )
    got = probe(bob, ops, umask=0o022)
    assert got == dict.fromkeys(ops, 0), got
    for name in ("moved-bob", "dir-bob", "symlink-bob", "fifo-bob"):
        st = os.lstat(src / name)
        assert (st.st_uid, st.st_gid) == (bob.uid, bob.gid), name


@pytest.mark.timeout(60)
def test_created_file_written_through_view_keeps_caller_owner(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """O_CREAT|O_TRUNC over an existing name and writes leave ownership with its owner."""
    alice = users.alice
    view = view_factory(config_text=config())
    src = make_dir(source / "src", 0o777)
    view.ok(f"attach work {src} owner={alice.name}")
    target = str(view.path / "work" / "out.txt")
    code = (
        f"fd = os.open({target!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)\n"
        "os.write(fd, b'abc'); os.close(fd)\n"
        f"fd = os.open({target!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
        "os.write(fd, b'abcd'); os.close(fd)\n"
        "print(json.dumps({}))"
    )
    py_as(alice, code, umask=0o022)
    st = os.lstat(src / "out.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (alice.uid, alice.gid, 0o640)
    assert (src / "out.txt").read_bytes() == b"abcd"
