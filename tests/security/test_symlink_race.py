"""Symlink attacks from inside the source: swaps racing the view, and metadata calls on links.

SPEC 1 and 3: symlinks are stored and returned, never followed by the daemon, and `.`/`..`
are never looked up on a source. The decoy is reached only through *relative* symlink text
(`../decoy-XXX/...`): natively, from the source, it leads to the decoy; through the view the
kernel resolves the same text against the view (`VIEW/NAME/../decoy-XXX` is `VIEW/decoy-XXX`,
which does not exist). So a SECRET seen through the view, or a file appearing in the decoy,
can only mean that the daemon itself resolved a symlink or `..` on the source.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, reap
from tests.support.escape import (
    SECRET,
    SECRET_NAME,
    Trees,
    assert_no_secret,
    original,
    snapshot,
)

RACE_S = 3.0
# No kernel caching: every access in the race asks the daemon again.
NO_CACHE = "[cache]\nentry_timeout = 0.0\nattr_timeout = 0.0\n"

# Run natively on the source, in its own process so it really runs alongside the reader:
# swap each NAME with NAME.lnk (a symlink into the decoy) with RENAME_EXCHANGE until time is up.
SWAPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
src, seconds, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
fd = os.open(src, os.O_PATH | os.O_DIRECTORY)
pairs = [(n.encode(), (n + ".lnk").encode()) for n in names]
rounds, end = 0, time.monotonic() + seconds
while time.monotonic() < end or rounds % 2:  # an even count leaves every pair as it started
    for a, b in pairs:
        if libc.renameat2(fd, a, fd, b, 2) != 0:
            sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    rounds += 1
print(rounds)
"""


@pytest.mark.timeout(90)
def test_directory_swapped_with_relative_symlink_to_decoy_never_leaks(
    view_factory: ViewFactory, trees: Trees
) -> None:
    view = view_factory(config_text=NO_CACHE)
    decoy_rel = f"../{trees.decoy.name}"
    # d (a directory) races with d.lnk -> ../decoy-XXX/d, whose `file` is SECRET natively.
    (trees.source / "d.lnk").symlink_to(f"{decoy_rel}/d")
    # victim (a file) races with victim.lnk, dangling into the decoy: a create that followed
    # it would make the decoy's `created`.
    (trees.source / "victim").write_bytes(original("victim"))
    (trees.source / "victim.lnk").symlink_to(f"{decoy_rel}/created")
    assert (trees.source / "d.lnk" / "file").read_bytes() == SECRET, "attack set up wrong"
    pinned_d = os.open(trees.source / "d", os.O_PATH | os.O_DIRECTORY)
    view.ok(f"attach data {trees.source}")
    data = view.path / "data"

    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(trees.source), str(RACE_S), "d", "victim"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    good_reads = 0
    leaks: list[str] = []
    errors: set[str] = set()
    written = 0
    try:
        deadline = time.monotonic() + RACE_S
        while time.monotonic() < deadline:
            for path in (data / "d" / "file", data / "d.lnk" / "file"):
                try:
                    content = path.read_bytes()
                except OSError as exc:
                    errors.add(errno.errorcode.get(exc.errno or 0, "?"))
                    continue
                if content == original("d/file"):
                    good_reads += 1
                else:
                    leaks.append(f"read {path}: {content[:40]!r}")
            for path in (data / "d", data / "d.lnk"):
                try:
                    names = os.listdir(path)
                except OSError:
                    continue
                if SECRET_NAME in names:
                    leaks.append(f"listed {path}: {names}")
            try:
                fd = os.open(data / "victim", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except OSError:
                pass
            else:
                os.close(fd)
            try:
                (data / "d" / f"w{written}").write_bytes(b"w")
                written += 1
            except OSError:
                pass
        out, err = swapper.communicate(timeout=30)
    finally:
        reap(swapper)
    assert swapper.returncode == 0, f"swapper failed: {err}"
    assert int(out) > 100, "the swapper hardly ran: the race proved nothing"
    assert not leaks, f"decoy content through the view: {leaks[:5]}"
    assert good_reads > 0, f"no read ever succeeded (errors {errors}): the race proved nothing"
    trees.decoy_unchanged()
    assert (trees.source / "victim").read_bytes() == original("victim")
    # Writes landed in the original directory object only.
    d_now = snapshot(pinned_d)
    os.close(pinned_d)
    assert d_now.pop("file") == original("d/file")
    assert sorted(d_now) == sorted(f"w{i}" for i in range(written))
    assert_no_secret(snapshot(data), "the view after the race")


@pytest.mark.timeout(60)
def test_symlink_metadata_calls_through_view_change_only_the_link(
    view_factory: ViewFactory, trees: Trees
) -> None:
    view = view_factory()
    target = trees.decoy / SECRET_NAME
    os.setxattr(target, "user.secret", b"decoy value")
    before = os.stat(target)
    (trees.source / "abs").symlink_to(target)
    (trees.source / "rel").symlink_to(f"../{trees.decoy.name}/{SECRET_NAME}")
    view.ok(f"attach data {trees.source}")
    for name in ("abs", "rel"):
        link = view.path / "data" / name
        assert os.readlink(link) == os.readlink(trees.source / name)
        try:
            value = os.getxattr(link, "user.secret", follow_symlinks=False)
        except OSError as exc:
            assert exc.errno in (errno.ENODATA, errno.EPERM, errno.ENOTSUP)
        else:
            pytest.fail(f"lgetxattr on {name} returned the target's xattr {value!r}")
        assert "user.secret" not in os.listxattr(link, follow_symlinks=False)
        try:
            os.setxattr(link, "user.planted", b"x", follow_symlinks=False)
        except OSError as exc:
            assert exc.errno in (errno.EPERM, errno.ENOTSUP)
        os.chown(link, 4242, 4242, follow_symlinks=False)
        os.utime(link, ns=(10**9, 10**9), follow_symlinks=False)
        assert os.lstat(trees.source / name)[4:6] == (4242, 4242)
        os.link(link, view.path / "data" / f"{name}.hard", follow_symlinks=False)
        assert os.readlink(trees.source / f"{name}.hard") == os.readlink(trees.source / name)
    after = os.stat(target)
    assert (after.st_uid, after.st_gid, after.st_mtime_ns, after.st_nlink) == (
        before.st_uid, before.st_gid, before.st_mtime_ns, before.st_nlink)
    assert os.listxattr(target) == ["user.secret"]
    trees.decoy_unchanged()


@pytest.mark.timeout(60)
def test_relative_symlink_through_view_resolves_inside_view_not_on_source(
    view_factory: ViewFactory, trees: Trees
) -> None:
    view = view_factory()
    rel = f"../{trees.decoy.name}"
    (trees.source / "up").symlink_to(rel)
    (trees.source / "sub" / "upup").symlink_to(f"../{rel}/{SECRET_NAME}")
    view.ok(f"attach data {trees.source}")
    data = view.path / "data"
    # The kernel resolves the text against the view, where VIEW/decoy-XXX does not exist.
    assert not os.path.exists(data / "up")
    assert not os.path.exists(data / "sub" / "upup")
    with pytest.raises(FileNotFoundError):
        (data / "up" / SECRET_NAME).read_bytes()
    with pytest.raises(FileNotFoundError):
        (data / "sub" / "upup").write_bytes(b"planted")
    # A file created through a dangling relative symlink would appear in the decoy.
    (trees.source / "dangle").symlink_to(f"{rel}/created")
    with pytest.raises(FileNotFoundError):
        os.close(os.open(data / "dangle", os.O_WRONLY | os.O_CREAT, 0o644))
    assert Path(data / "dangle").is_symlink()
    trees.decoy_unchanged()
