"""A change made through the view is visible at once to every other process (SPEC 3, 7).

The view lets the kernel cache entries and attributes for `cache.entry_timeout` and
`cache.attr_timeout` (1 s by default). Changes made through the view itself must still be
seen at once by a second process that has already warmed those caches: a peer subprocess
stats, lists and reads first, then this process changes the file through the view, and the
peer must see the change on its very next call (and the other way round). No sleeps: a
stale cache would show up as an old answer, not as a slow one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.posix.cases import JSON, write_file
from tests.support.pairs import Pair

pytestmark = pytest.mark.needs_root  # the daemon mounts a FUSE view

# The peer: one JSON request per line on stdin, one JSON answer per line on stdout.
_PEER = r'''
import errno, json, os, stat, sys

def st(p):
    s = os.stat(p, follow_symlinks=False)
    return [stat.S_IFMT(s.st_mode), oct(stat.S_IMODE(s.st_mode)), s.st_size, s.st_nlink]

def read(p):
    with open(p, "rb") as f:
        return f.read().decode("latin-1")

def write(p, data):
    with open(p, "wb") as f:
        f.write(data.encode("latin-1"))

held = {}

def hold(p):
    held[p] = os.open(p, os.O_RDONLY)

def pread(p):
    return os.pread(held[p], 1 << 16, 0).decode("latin-1")

def release(p):
    os.close(held.pop(p))

OPS = {
    "hold": hold,
    "pread": pread,
    "release": release,
    "stat": st,
    "read": read,
    "list": lambda p: sorted(os.listdir(p)),
    "write": write,
    "rename": os.rename,
    "unlink": os.unlink,
    "chmod": lambda p, m: os.chmod(p, int(m, 8)),
    "truncate": os.truncate,
}

for line in sys.stdin:
    op, *args = json.loads(line)
    try:
        answer = OPS[op](*args)
    except OSError as exc:
        answer = errno.errorcode.get(exc.errno, str(exc.errno))
    print(json.dumps(answer), flush=True)
'''


class Peer:
    """A second process working on the same view, kept alive so its kernel caches stay warm."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PEER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, op: str, *args: JSON) -> JSON:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([op, *args]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"peer died with {self.proc.poll()}"
        answer: JSON = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """The expected modes below assume files are created 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def peer() -> Iterator[Peer]:
    made = Peer()
    try:
        yield made
    finally:
        made.close()


def _stat(path: Path) -> list[JSON]:
    s = os.stat(path, follow_symlinks=False)
    return [stat.S_IFMT(s.st_mode), oct(stat.S_IMODE(s.st_mode)), s.st_size, s.st_nlink]


def _file(perm: int, size: int, nlink: int = 1) -> list[JSON]:
    """What the peer's stat must say about a regular file."""
    return [stat.S_IFREG, oct(perm), size, nlink]


@pytest.mark.timeout(60)
def test_write_through_view_is_seen_by_peer_at_once(pair: Pair, peer: Peer) -> None:
    f = pair.view_dir / "f"
    write_file(f, b"first")
    assert peer("read", str(f)) == "first"
    assert peer("stat", str(f)) == _file(0o644, 5)
    write_file(f, b"second, longer")
    assert peer("stat", str(f)) == _file(0o644, 14)
    assert peer("read", str(f)) == "second, longer"
    with open(f, "r+b") as handle:  # same size, new bytes: only the data changes
        handle.write(b"SECOND")
    assert peer("read", str(f)) == "SECOND, longer"
    os.truncate(f, 3)
    assert peer("read", str(f)) == "SEC"
    assert peer("stat", str(f)) == _file(0o644, 3)
    os.chmod(f, 0o600)
    assert peer("stat", str(f)) == _file(0o600, 3)


@pytest.mark.timeout(60)
def test_write_through_view_is_seen_on_peers_open_file_at_once(pair: Pair, peer: Peer) -> None:
    f = pair.view_dir / "f"
    write_file(f, b"cached page")
    assert peer("hold", str(f)) is None
    try:
        assert peer("pread", str(f)) == "cached page"
        with open(f, "r+b") as handle:
            handle.write(b"CACHED")
        assert peer("pread", str(f)) == "CACHED page"
        write_file(f, b"rewritten from scratch, and longer")
        assert peer("pread", str(f)) == "rewritten from scratch, and longer"
        os.truncate(f, 9)
        assert peer("pread", str(f)) == "rewritten"
        os.rename(f, pair.view_dir / "g")
        write_file(pair.view_dir / "g", b"after rename")
        assert peer("pread", str(f)) == "after rename"
    finally:
        assert peer("release", str(f)) is None


@pytest.mark.timeout(60)
def test_rename_and_unlink_through_view_are_seen_by_peer_at_once(
    pair: Pair, peer: Peer
) -> None:
    d = pair.view_dir
    write_file(d / "a", b"A")
    assert peer("list", str(d)) == ["a"]
    assert peer("read", str(d / "a")) == "A"
    assert peer("stat", str(d / "b")) == "ENOENT"  # a negative entry the kernel may cache
    os.rename(d / "a", d / "b")
    assert peer("stat", str(d / "a")) == "ENOENT"
    assert peer("read", str(d / "b")) == "A"
    assert peer("list", str(d)) == ["b"]
    write_file(d / "c", b"C")
    assert peer("read", str(d / "c")) == "C"
    os.rename(d / "c", d / "b")  # replaces the name the peer just looked up
    assert peer("read", str(d / "b")) == "C"
    os.link(d / "b", d / "h")
    assert peer("stat", str(d / "b")) == _file(0o644, 1, nlink=2)
    os.unlink(d / "b")
    assert peer("stat", str(d / "b")) == "ENOENT"
    assert peer("stat", str(d / "h")) == _file(0o644, 1, nlink=1)
    os.unlink(d / "h")
    assert peer("list", str(d)) == []
    os.mkdir(d / "sub")
    assert peer("list", str(d / "sub")) == []
    os.rmdir(d / "sub")
    assert peer("list", str(d / "sub")) == "ENOENT"


@pytest.mark.timeout(60)
def test_peer_changes_are_seen_here_at_once(pair: Pair, peer: Peer) -> None:
    d = pair.view_dir
    write_file(d / "f", b"mine")
    assert (d / "f").read_bytes() == b"mine"
    assert _stat(d / "f") == _file(0o644, 4)
    assert peer("write", str(d / "f"), "the peer's longer text") is None
    assert _stat(d / "f") == _file(0o644, len("the peer's longer text"))
    assert (d / "f").read_bytes() == b"the peer's longer text"
    assert peer("truncate", str(d / "f"), 3) is None
    assert (d / "f").read_bytes() == b"the"
    assert peer("chmod", str(d / "f"), "640") is None
    assert _stat(d / "f") == _file(0o640, 3)
    assert peer("rename", str(d / "f"), str(d / "g")) is None
    assert not (d / "f").exists()
    assert (d / "g").read_bytes() == b"the"
    assert peer("unlink", str(d / "g")) is None
    assert not (d / "g").exists()
    assert os.listdir(d) == []
