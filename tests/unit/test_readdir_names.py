"""READDIRPLUS without attributes for what the kernel already holds (issue 13 item 5).

An entry the kernel got within the last three quarters of entry_timeout is listed by name,
inode number and type alone: no stat of the backing object, no lookup reference. Anything
else (never found, expired, forgotten, being trimmed, a squashed subtree, entry_timeout 0)
is listed with its attributes and one lookup counted, as before.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import cast

import pyfuse3
import pytest

from fusemount.core.records import Policy
from fusemount.view.ops import Ops
from tests.support.ops import CTX, make_ops, make_tree, run

# name -> ("name", ino, mode) or ("full", ino, mode)
Listed = dict[bytes, tuple[str, int, int]]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Listed:
    listed: Listed = {}

    def full(token: object, name: bytes, attrs: pyfuse3.EntryAttributes, off: int) -> bool:
        listed[name] = ("full", attrs.st_ino, attrs.st_mode)
        return True

    def name_only(token: object, name: bytes, ino: int, mode: int, off: int) -> bool:
        listed[name] = ("name", ino, mode)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", full)
    monkeypatch.setattr(pyfuse3, "readdir_reply_name", name_only)
    return listed


async def _list(ops: Ops, dir_ino: int, listed: Listed) -> Listed:
    listed.clear()
    fh = await ops.opendir(pyfuse3.InodeT(dir_ino), CTX)
    await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
    await ops.releasedir(fh)
    return {k: v for k, v in listed.items() if k not in (b".", b"..")}


def test_entries_the_kernel_holds_are_listed_by_name_alone(
    tmp_path: Path, recorded: Listed
) -> None:
    ops, live = make_ops(make_tree(tmp_path))
    table = ops.inodes

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        found = {f"f{f}".encode(): await ops.lookup(d0.st_ino, f"f{f}".encode(), CTX)
                 for f in range(10)}
        lookups = {name: table.node(e.st_ino).lookups for name, e in found.items()}
        listed = await _list(ops, d0.st_ino, recorded)
        assert len(listed) == 20
        # `.` and `..` always by name: the kernel never links them.
        assert recorded[b"."] == recorded[b".."] == ("name", d0.st_ino, stat.S_IFDIR)
        for name, (kind, ino, mode) in listed.items():
            if name in found:  # just looked up: the kernel holds a valid entry
                assert (kind, ino, mode) == ("name", found[name].st_ino, stat.S_IFREG)
                assert table.node(ino).lookups == lookups[name]  # no reference taken
            else:
                assert kind == "full" and stat.S_ISREG(mode)
                assert table.node(ino).lookups == 1
        # Listed with attributes just now: the next listing names them all alone.
        again = await _list(ops, d0.st_ino, recorded)
        assert {k: v[0] for k, v in again.items()} == dict.fromkeys(listed, "name")
        assert {k: v[1] for k, v in again.items()} == {k: v[1] for k, v in listed.items()}
        # Forgotten by the kernel, or asked to be (trimming): attributes again.
        f0, f1 = table.node(found[b"f0"].st_ino), table.node(found[b"f1"].st_ino)
        table.forget(f0.ino, f0.lookups)
        f1.trimming = True
        third = await _list(ops, d0.st_ino, recorded)
        assert third[b"f0"][0] == third[b"f1"][0] == "full"
        assert third[b"f2"][0] == "name"

    run(body)
    live.close()


def test_an_entry_older_than_three_quarters_of_entry_timeout_gets_attributes(
    tmp_path: Path, recorded: Listed
) -> None:
    ops, live = make_ops(make_tree(tmp_path))
    ops.subtree.entry_timeout = 0.2

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        await ops.lookup(d0.st_ino, b"f3", CTX)
        assert (await _list(ops, d0.st_ino, recorded))[b"f3"][0] == "name"
        time.sleep(0.16)
        assert (await _list(ops, d0.st_ino, recorded))[b"f3"][0] == "full"

    run(body)
    live.close()


@pytest.mark.parametrize("entry_timeout, policy", [
    (0.0, Policy(owner=0)),  # nothing cached: nothing held
    (1.0, Policy(owner=0, squash_root=True)),  # squashed: the kernel caches no entry
])
def test_nothing_is_listed_by_name_alone_where_the_kernel_caches_no_entry(
    tmp_path: Path, recorded: Listed, entry_timeout: float, policy: Policy
) -> None:
    tmp_path.chmod(0o755)  # a squashed root walks as nobody
    ops, live = make_ops(make_tree(tmp_path), policy=policy)
    ops.subtree.entry_timeout = entry_timeout

    async def body() -> None:
        d0 = await ops.lookup(pyfuse3.InodeT(live.root_ino), b"d0", CTX)
        await ops.lookup(d0.st_ino, b"f3", CTX)
        listed = await _list(ops, d0.st_ino, recorded)
        assert {kind for kind, _, _ in listed.values()} == {"full"}

    run(body)
    live.close()
