"""A source that stalls (a hung network or FUSE filesystem) must not stall the view.

The test serves a tiny FUSE filesystem whose `slow` file never answers a read in time,
attaches it next to a local source, and checks that reading it fails with EIO after
`limits.request_timeout_s`, that `mounts.json` says the subtree is stalled, that the other
subtree keeps answering meanwhile, and that health returns once a call succeeds.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, is_mounted, lazy_unmount

_STALLFS = r'''
import errno, os, stat, sys
import pyfuse3, trio

FILES = {b"slow": 2, b"fast": 3}

class StallFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def attrs(self, ino):
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.entry_timeout = e.attr_timeout = 0
        if ino == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFREG | 0o644, 1, 4
        return e

    async def getattr(self, inode, ctx=None):
        return self.attrs(inode)

    async def lookup(self, parent, name, ctx=None):
        if parent != pyfuse3.ROOT_INODE or name not in FILES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs(FILES[name])

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start, token):
        for i, (name, ino) in enumerate(FILES.items()):
            if i >= start and not pyfuse3.readdir_reply(token, name, self.attrs(ino), i + 1):
                break

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        if fh == FILES[b"slow"]:
            await trio.sleep(30)
        return b"data"[off:off + size]

pyfuse3.init(StallFS(), sys.argv[1], {"fsname=stallfs"})
try:
    trio.run(pyfuse3.main)
finally:
    pyfuse3.close()
'''


def _health(records: list[dict[str, object]], name: str) -> object:
    return next(r["health"] for r in records if r["name"] == name)


@pytest.mark.timeout(90)
def test_stalled_source_fails_with_eio_and_other_subtrees_keep_answering(
    view_factory: ViewFactory, test_root: Path, source: Path
) -> None:
    mnt = test_root / "stallfs"
    mnt.mkdir()
    stallfs = subprocess.Popen([sys.executable, "-c", _STALLFS, str(mnt)],
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_mounted(mnt), "the stalling test filesystem did not mount"
        view = view_factory("[limits]\nrequest_timeout_s = 1.0\n")
        (source / "local").write_text("local data")
        view.ok(f"attach stall {mnt}")
        view.ok(f"attach local {source}")
        assert _health(view.mounts_json(), "stall") == "ok"

        outcome: dict[str, object] = {}

        def read_slow() -> None:
            started = time.monotonic()
            try:
                with open(view.path / "stall" / "slow", "rb") as f:
                    outcome["data"] = f.read()
            except OSError as exc:
                outcome["errno"] = exc.errno
            outcome["seconds"] = time.monotonic() - started

        reader = threading.Thread(target=read_slow)
        reader.start()
        # While the stalled read is pending, the local subtree answers.
        served = 0
        while reader.is_alive() and served < 200:
            assert (view.path / "local" / "local").read_text() == "local data"
            served += 1
        reader.join(timeout=30)
        assert not reader.is_alive(), "the stalled read never returned"
        assert outcome.get("errno") == errno.EIO, outcome
        assert served > 0
        assert _health(view.mounts_json(), "stall") == "stalled"
        assert _health(view.mounts_json(), "local") == "ok"

        # A call that answers in time clears the stall.
        assert (view.path / "stall" / "fast").read_bytes() == b"data"
        assert _health(view.mounts_json(), "stall") == "ok"
        view.ok("detach stall")
    finally:
        stallfs.terminate()
        try:
            stallfs.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stallfs.kill()
            stallfs.wait()
        if is_mounted(mnt):
            lazy_unmount(mnt)
        os.sync()
