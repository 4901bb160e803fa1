"""SPEC 6 limits through a real view: set each one small, fill it, the next request fails with
the SPEC's errno and a message naming the limit, nothing changes, and freeing one unit makes
the same request succeed. (max_command_bytes is covered in test_protocol.py.)
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.control import make_dir, names_listed, record_of, refused
from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.dirs import SourceFactory
from tests.support.permissions import self_service_config
from tests.support.users import SYSTEM_PYTHON, User, Users


@pytest.mark.timeout(60)
def test_max_subtrees_is_enospc_until_one_is_detached(
    view_factory: ViewFactory, new_source: SourceFactory
) -> None:
    view = view_factory("[limits]\nmax_subtrees = 3\n")
    for i in range(3):
        view.ok(f"attach s{i} {new_source()}")
    extra = new_source()
    message = refused(view, f"attach s3 {extra}", errno.ENOSPC)
    assert "max_subtrees" in message
    refused(view, f"attach s3 {extra} holder=h1", errno.ENOSPC)
    refused(view, "mount s3 tmpfs none", errno.ENOSPC)
    assert names_listed(view.path) == {"s0", "s1", "s2"}
    view.ok("detach s1")
    view.ok(f"attach s3 {extra}")
    assert names_listed(view.path) == {"s0", "s2", "s3"}


@pytest.mark.timeout(60)
def test_max_subtrees_per_user_is_edquot_until_one_is_detached(
    view_factory: ViewFactory, scratch: Path, users: Users
) -> None:
    alice = users.alice
    dirs = [make_dir(scratch, f"d{i}", owner=alice) for i in range(3)]
    view = view_factory(self_service_config(scratch, per_user=2))
    for i in range(2):
        reply = ctl_as(alice, view.path, f"attach d{i} {dirs[i]}")
        assert reply.errno is None, reply.describe("attach")
    message = refused(view, f"attach d2 {dirs[2]}", errno.EDQUOT, alice)
    assert "max_subtrees_per_user" in message
    # Another user's subtrees do not count against alice.
    bobs = make_dir(scratch, "bobs", owner=users.bob)
    reply = ctl_as(users.bob, view.path, f"attach bobs {bobs}")
    assert reply.errno is None, reply.describe("attach as bob")
    reply = ctl_as(alice, view.path, "detach d0")
    assert reply.errno is None, reply.describe("detach")
    reply = ctl_as(alice, view.path, f"attach d2 {dirs[2]}")
    assert reply.errno is None, reply.describe("attach after detach")
    assert names_listed(view.path) == {"d1", "d2", "bobs"}


@pytest.mark.timeout(60)
def test_max_holders_is_enospc_until_one_is_released(
    view_factory: ViewFactory, source: Path
) -> None:
    view = view_factory("[limits]\nmax_holders = 3\n")
    view.ok(f"attach data {source} holder=h0")
    view.ok("hold data h1")
    view.ok(f"attach data {source} holder=h2")
    message = refused(view, "hold data h3", errno.ENOSPC)
    assert "max_holders" in message
    refused(view, f"attach data {source} holder=h3", errno.ENOSPC)
    # An existing holder is not a new one: no limit applies to repeating it.
    view.ok("hold data h1")
    view.ok("release data h1")
    view.ok("hold data h3")
    assert record_of(view.mounts_json(), "data")["holders"] == ["h0", "h2", "h3"]


@pytest.mark.timeout(60)
def test_max_holders_counts_per_subtree(
    view_factory: ViewFactory, new_source: SourceFactory
) -> None:
    view = view_factory("[limits]\nmax_holders = 2\n")
    view.ok(f"attach a {new_source()} holder=h0")
    view.ok("hold a h1")
    view.ok(f"attach b {new_source()} holder=h0")
    view.ok("hold b h1")
    refused(view, "hold a h2", errno.ENOSPC)
    refused(view, "hold b h2", errno.ENOSPC)


@pytest.mark.timeout(60)
def test_max_open_files_is_enfile_until_one_is_closed(
    view_factory: ViewFactory, source: Path
) -> None:
    limit = 4
    for i in range(limit + 2):
        (source / f"f{i}").write_text(str(i))
    view = view_factory(f"[limits]\nmax_open_files = {limit}\n")
    view.ok(f"attach data {source}")
    data = view.path / "data"
    with ExitStack() as stack:
        held = [stack.enter_context(open(data / f"f{i}", "rb")) for i in range(limit)]
        with pytest.raises(OSError) as full:
            open(data / f"f{limit}", "rb").close()
        assert full.value.errno == errno.ENFILE
        with pytest.raises(OSError) as full_dir:
            os.close(os.open(data, os.O_RDONLY | os.O_DIRECTORY))
        assert full_dir.value.errno == errno.ENFILE
        with pytest.raises(OSError) as full_create:
            os.close(os.open(data / "new", os.O_WRONLY | os.O_CREAT, 0o644))
        assert full_create.value.errno == errno.ENFILE
        # Nothing else changed: what is open keeps working, nothing was created.
        assert [f.read() for f in held] == [str(i).encode() for i in range(limit)]
        assert not (source / "new").exists()
        held[0].close()
        with open(data / f"f{limit}", "rb") as again:
            assert again.read() == str(limit).encode()
    # Everything closed: the full allowance is back.
    with ExitStack() as stack:
        for i in range(limit):
            stack.enter_context(open(data / f"f{i}", "rb"))


# Run as a user: open each path (a directory too), say what each open gave, hold them all
# until told, then exit.
_OPENER = r'''
import errno, json, os, sys
held, out = [], []
for path in sys.argv[1:]:
    try:
        held.append(os.open(path, os.O_RDONLY))
        out.append(0)
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc.errno)))
print(json.dumps(out), flush=True)
sys.stdin.readline()
'''


class _Opener:
    """A process of user that holds open files of the view until closed."""

    def __init__(self, user: User, paths: list[Path]) -> None:
        command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                   "--", SYSTEM_PYTHON, "-I", "-c", _OPENER, *map(str, paths)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            pytest.fail(f"opener as {user.name} failed: {self.proc.stderr.read()}")
        self.results: list[object] = json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _opens(user: User, paths: list[Path]) -> list[object]:
    """What each open gives user (all held at once, then closed)."""
    opener = _Opener(user, paths)
    opener.close()
    return opener.results


def _shared(view: ViewHandle, source: Path, users: Users, count: int) -> list[Path]:
    for i in range(count):
        (source / f"f{i}").write_text(str(i))
    view.ok(f"attach data {source} allow=@{users.team.name}:ro,{users.carol.name}:ro")
    return [view.path / "data" / f"f{i}" for i in range(count)]


@pytest.mark.timeout(60)
def test_max_open_files_per_user_is_emfile_for_that_user_only(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    limit = 5
    view = view_factory(f"[limits]\nmax_open_files_per_user = {limit}\n")
    files = _shared(view, source, users, limit + 3)
    # Files and directories both count.
    alice = _Opener(users.alice, [view.path / "data", *files[: limit + 1]])
    try:
        assert alice.results == [0] * limit + ["EMFILE", "EMFILE"]
        # Everyone else keeps their own allowance, root is not capped per user.
        assert _opens(users.bob, files[:limit + 1]) == [0] * limit + ["EMFILE"]
        with ExitStack() as stack:
            for path in files:
                stack.enter_context(open(path, "rb"))
    finally:
        alice.close()
    # Closed: alice's full allowance is back.
    assert _opens(users.alice, files[:limit]) == [0] * limit


@pytest.mark.timeout(60)
def test_a_flood_of_non_admins_leaves_the_admins_room_to_open(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    # 16 slots, 2 kept for admins (an eighth), 6 per non-admin user.
    view = view_factory(f'[access]\nadmins = ["root", "@{users.admins.name}"]\n'
                        "[limits]\nmax_open_files = 16\nmax_open_files_per_user = 6\n")
    files = _shared(view, source, users, 8)
    openers = []
    try:
        openers.append(_Opener(users.alice, files[:6]))
        openers.append(_Opener(users.bob, files[:6]))
        openers.append(_Opener(users.carol, files[:6]))
        assert [o.results for o in openers] == [[0] * 6, [0] * 6, [0, 0, "ENFILE", "ENFILE",
                                                                   "ENFILE", "ENFILE"]]
        # 14 taken by non-admins: an admin by group and root still open files.
        assert _opens(users.dave, files[:1]) == [0]
        with open(files[0], "rb"), open(files[1], "rb"):
            # Now the table is full for everyone, admins included.
            with pytest.raises(OSError) as full:
                open(files[2], "rb").close()
            assert full.value.errno == errno.ENFILE
    finally:
        for opener in openers:
            opener.close()
