"""A source that stalls (a hung network or FUSE filesystem) must not stall the view.

The test serves a tiny FUSE filesystem whose `slow` file never answers a read in time,
attaches it next to a local source, and checks that reading it fails with EIO after
`limits.request_timeout_s`, that `mounts.json` says the subtree is stalled, that the other
subtree keeps answering meanwhile, and that health returns once a call succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ctl import Reply
from tests.support.daemon import ViewFactory, is_mounted, lazy_unmount, wait_until

# The end of each test filesystem script: serve it on argv[1] until terminated.
_SERVE = '''
pyfuse3.init({cls}(), sys.argv[1], {{"fsname={fsname}"}})
try:
    trio.run(pyfuse3.main)
finally:
    pyfuse3.close()
'''

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

''' + _SERVE.format(cls="StallFS", fsname="stallfs")


@contextlib.contextmanager
def _serving(script: str, mnt: Path, *args: Path) -> Iterator[None]:
    """Mount the test filesystem script at mnt (a fresh directory) for the with block; after
    it, terminate it (kill if need be) and make sure nothing stays mounted at mnt."""
    mnt.mkdir()
    fs = subprocess.Popen([sys.executable, "-c", script, str(mnt), *map(str, args)],
                          stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: is_mounted(mnt), 15), "the test filesystem did not mount"
        yield
    finally:
        fs.terminate()
        try:
            fs.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fs.kill()
            fs.wait()
        if is_mounted(mnt):
            lazy_unmount(mnt)
        os.sync()


def _health(records: list[dict[str, object]], name: str) -> object:
    return next(r["health"] for r in records if r["name"] == name)


@pytest.mark.timeout(90)
def test_stalled_source_fails_with_eio_and_other_subtrees_keep_answering(
    view_factory: ViewFactory, test_root: Path, source: Path
) -> None:
    mnt = test_root / "stallfs"
    with _serving(_STALLFS, mnt):
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


# A filesystem whose lookup of `hang` answers only once the file named by argv[2] exists
# (ENOENT then), after creating argv[3] to say the lookup arrived: a source path that hangs.
_HANGFS = r'''
import errno, os, stat, sys
import pyfuse3, trio

class HangFS(pyfuse3.Operations):
    supports_dot_lookup = False

    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = inode, stat.S_IFDIR | 0o755, 2
        return e

    async def lookup(self, parent, name, ctx=None):
        if name == b"hang":
            open(sys.argv[3], "w").close()
            for _ in range(1200):
                if os.path.exists(sys.argv[2]):
                    break
                await trio.sleep(0.05)
        raise pyfuse3.FUSEError(errno.ENOENT)

''' + _SERVE.format(cls="HangFS", fsname="hangfs")


RELOADING = "signal SIGHUP: reloading"  # what the daemon logs when a reload begins


def _within(seconds: float, call: Callable[[], object]) -> bool:
    """Did call return within seconds? (Run in a thread: a frozen daemon must fail the test,
    not hang it.)"""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.timeout(90)
def test_ctl_command_on_a_hanging_source_path_neither_freezes_the_view_nor_other_commands_overtake(
    view_factory: ViewFactory, test_root: Path, source: Path
) -> None:
    """Issue 16 item 3: the source is opened in a worker thread, so the view keeps answering
    while it hangs; the commands stay serialised, so a second one waits for the first. (The
    second comes from a reload's `[[subtree]]` table: two ctl writes never race in the
    daemon, since the kernel already serialises writes to one file.)"""
    mnt, release, arrived = test_root / "hangfs", test_root / "release", test_root / "arrived"
    with _serving(_HANGFS, mnt, release, arrived):
        try:
            view = view_factory()
            (source / "local").write_text("local data")
            view.ok(f"attach local {source}")
            second = test_root / "second"
            second.mkdir()
            config = view.daemon.config_path.read_text()

            replies: dict[str, Reply] = {}

            def run(key: str, command: str) -> threading.Thread:
                thread = threading.Thread(
                    target=lambda: replies.__setitem__(key, view.ctl(command)))
                thread.start()
                return thread

            hung = run("hung", f"attach hung {mnt / 'hang'}")
            assert wait_until(arrived.exists, 15, 0.02), "the attach never looked the source up"
            reloads = view.daemon.stderr_text().count(RELOADING)
            view.daemon.config_path.write_text(
                f'{config}\n[[subtree]]\nname = "second"\nsource = "{second}"\n')
            os.kill(view.pid, signal.SIGHUP)
            wait_until(lambda: view.daemon.stderr_text().count(RELOADING) != reloads, 10, 0.02)

            # The view answers while the source hangs.
            assert _within(5, lambda: (view.path / "local" / "local").read_text()), "view froze"
            assert _within(5, lambda: os.stat(view.path)), "view froze"
            assert _within(5, view.mounts), "the control files froze"
            # The reload's attach waits for the hung command instead of overtaking it.
            time.sleep(0.5)
            assert hung.is_alive(), replies
            assert {r["name"] for r in view.mounts_json()} == {"local"}

            release.touch()
            hung.join(timeout=30)
            assert not hung.is_alive()
            assert replies["hung"].errno == errno.ENOENT, replies["hung"]
            both = {"local", "second"}
            assert wait_until(lambda: {r["name"] for r in view.mounts_json()} == both, 10), \
                view.mounts_json()
        finally:
            release.touch()  # the hung lookup must end before the filesystem can
