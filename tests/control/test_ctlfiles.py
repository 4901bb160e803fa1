"""The `.fusemount/` files (SPEC 4 table): modes, direct I/O with size 0, contents, and a
folder nobody can change; `mounts`/`mounts.json` show each reader only what it may access.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.control import make_dir
from tests.support.daemon import ViewHandle
from tests.support.dirs import SourceFactory
from tests.support.users import Users, py_as

_MODES = {"ctl": 0o666, "mounts": 0o444, "mounts.json": 0o444, "version": 0o444}


@pytest.mark.timeout(60)
def test_control_files_have_spec_modes_and_size_zero(view: ViewHandle) -> None:
    folder = view.path / ".fusemount"
    assert sorted(os.listdir(folder)) == ["ctl", "metrics", "mounts", "mounts.json", "version"]
    for name, mode in _MODES.items():
        st = os.stat(folder / name)
        assert stat.S_ISREG(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == mode, f"{name}: {oct(st.st_mode)}"
        assert st.st_size == 0, name
        assert st.st_uid == 0, name
    assert re.fullmatch(r"fusemount \d+\.\d+\.\d+\n?", (folder / "version").read_text())
    root = os.stat(view.path)
    # No group bits (SPEC 3): the root's ACL is never cached, so group bits would cost a
    # GETXATTR of the root on every path walk by a non-root user.
    assert (root.st_uid, stat.S_IMODE(root.st_mode)) == (0, 0o705)


@pytest.mark.timeout(60)
def test_control_folder_cannot_be_changed(view: ViewHandle) -> None:
    folder = view.path / ".fusemount"
    attempts: dict[str, Callable[[], object]] = {
        "create in folder": lambda: os.close(os.open(folder / "new", os.O_CREAT | os.O_WRONLY)),
        "mkdir in folder": lambda: os.mkdir(folder / "dir"),
        "unlink ctl": lambda: os.unlink(folder / "ctl"),
        "rename ctl": lambda: os.rename(folder / "ctl", folder / "ctl2"),
        "rename folder": lambda: os.rename(folder, view.path / "moved"),
        "rmdir folder": lambda: os.rmdir(folder),
        "chmod ctl": lambda: os.chmod(folder / "ctl", 0o600),
        "chmod folder": lambda: os.chmod(folder, 0o700),
        "chown mounts": lambda: os.chown(folder / "mounts", 1, 1),
        "write mounts": lambda: os.close(os.open(folder / "mounts", os.O_WRONLY)),
        "link ctl": lambda: os.link(folder / "ctl", folder / "hard"),
        "symlink in folder": lambda: os.symlink("ctl", folder / "sym"),
        "create in root": lambda: os.close(os.open(view.path / "x", os.O_CREAT | os.O_WRONLY)),
        "mkdir in root": lambda: os.mkdir(view.path / "x"),
    }
    allowed = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY}
    wrong = []
    for what, attempt in attempts.items():
        try:
            attempt()
        except OSError as exc:
            if exc.errno not in allowed:
                wrong.append(f"{what}: {errno.errorcode.get(exc.errno or 0)}")
        else:
            wrong.append(f"{what}: succeeded")
    assert wrong == []
    assert sorted(os.listdir(folder)) == ["ctl", "metrics", "mounts", "mounts.json", "version"]
    assert sorted(os.listdir(view.path)) == [".fusemount"]


@pytest.mark.timeout(60)
def test_mounts_lists_one_line_per_subtree(
    view: ViewHandle, new_source: SourceFactory, test_root: Path
) -> None:
    spaced = make_dir(test_root, "with space")
    view.ok(f"attach a {new_source()}")
    view.ok(f"attach b '{spaced}' ro")
    lines = view.mounts()
    assert len(lines) == 2
    assert [line.split()[0] for line in lines] == ["a", "b"]
    assert all(len(line.split()) == len(lines[0].split()) for line in lines), lines
    records = view.mounts_json()
    assert [r["name"] for r in records] == ["a", "b"]
    assert records[1]["source"] == str(spaced) and records[1]["ro"] is True


@pytest.mark.timeout(60)
def test_readers_see_only_subtrees_they_may_access(
    view: ViewHandle, new_source: SourceFactory, users: Users
) -> None:
    view.ok(f"attach forall {new_source()} allow=*:ro")
    view.ok(f"attach forbob {new_source()} allow={users.bob.name}:rw")
    view.ok(f"attach forteam {new_source()} allow=@{users.team.name}:ro")
    view.ok(f"attach rootonly {new_source()}")
    code = (
        f"base = {str(view.path / '.fusemount')!r}\n"
        "names = [r['name'] for r in json.loads(open(base + '/mounts.json').read())]\n"
        "lines = [l.split()[0] for l in open(base + '/mounts').read().splitlines()]\n"
        "print(json.dumps([names, lines]))"
    )
    seen = {}
    for user in (users.alice, users.bob, users.carol):
        result = py_as(user, code)
        assert isinstance(result, list) and result[0] == result[1], result
        seen[user.name] = result[0]
    assert seen[users.alice.name] == ["forall", "forteam"]
    assert seen[users.bob.name] == ["forall", "forbob", "forteam"]
    assert seen[users.carol.name] == ["forall"]
    assert [r["name"] for r in view.mounts_json()] == ["forall", "forbob", "forteam", "rootonly"]


@pytest.mark.timeout(60)
def test_reply_can_be_read_in_small_pieces(view: ViewHandle, source: Path) -> None:
    fd = os.open(view.path / ".fusemount" / "ctl", os.O_RDWR)
    try:
        os.write(fd, f"attach data {source}".encode())
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = os.read(fd, 3)
            assert chunk, f"reply ended early: {raw!r}"
            raw += chunk
        assert os.read(fd, 3) == b""
    finally:
        os.close(fd)
    assert json.loads(raw)["ok"] is True


@pytest.mark.timeout(60)
def test_huge_write_is_e2big_and_daemon_survives(view: ViewHandle, source: Path) -> None:
    fd = os.open(view.path / ".fusemount" / "ctl", os.O_RDWR)
    try:
        with pytest.raises(OSError) as refused:
            os.write(fd, b"attach a " + b"/" * (1 << 20))
        assert refused.value.errno == errno.E2BIG
    finally:
        os.close(fd)
    view.ok(f"attach data {source}")
