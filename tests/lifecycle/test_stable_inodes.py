"""Stable inode numbers through a real view (SPEC 3, issue 13 item 3).

The same object shows the same st_ino whatever the daemon forgot or evicted in between
(max_inodes trimming, drop_caches) and across a restart; two subtrees over one source
never share a number; so tar, find, cp -a and rsync -aH walk a tree larger than the
inode cap without a warning and keep its hard links.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory

SMALL_CAP = "[limits]\nmax_inodes = 1024\n"  # the smallest the config allows


def _drop_caches() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def _make_tree(root: Path, dirs: int, files: int, link_pairs: int = 0) -> None:
    """dirs x files empty files; pair i links d{i}/f0 as d{dirs-1-i}/link{i}, so a walk meets
    the two names of one file far apart (further than the inode cap)."""
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir()
        for f in range(files):
            os.mknod(sub / f"f{f}")
    for i in range(link_pairs):
        os.link(root / f"d{i}" / "f0", root / f"d{dirs - 1 - i}" / f"link{i}")


def _run(args: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)


def _clean(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0 and done.stderr == "", (done.returncode, done.stderr)


def _assert_links_kept(copy: Path, dirs: int, link_pairs: int) -> None:
    for i in range(link_pairs):
        first = os.lstat(copy / f"d{i}" / "f0")
        second = os.lstat(copy / f"d{dirs - 1 - i}" / f"link{i}")
        assert (first.st_ino, first.st_nlink) == (second.st_ino, 2), f"pair {i} split"


@pytest.mark.timeout(120)
def test_number_is_kept_after_drop_caches_and_restart(view_factory: ViewFactory,
                                                      source: Path) -> None:
    (source / "d" / "e").mkdir(parents=True)
    for n in range(20):
        (source / "d" / f"f{n}").write_text(str(n))
    view = view_factory()
    view.ok(f"attach a {source}")
    view.ok(f"attach b {source}")
    rels = ["", "d", "d/e", "d/f0", "d/f19"]
    numbers = [os.lstat(view.path / "a" / rel).st_ino for rel in rels]
    other = [os.lstat(view.path / "b" / rel).st_ino for rel in rels]
    assert len(set(numbers)) == len(rels)
    assert not set(numbers) & set(other), "two subtrees over one source share numbers"
    assert all(ino >= 1000 for ino in numbers + other)  # 1..999 are the view's own
    _drop_caches()
    assert [os.lstat(view.path / "a" / rel).st_ino for rel in rels] == numbers
    view.restart()
    # Another order than before: a counter would hand out other numbers now.
    for n in range(1, 19):
        os.lstat(view.path / "b" / "d" / f"f{n}")
    assert [os.lstat(view.path / "a" / rel).st_ino for rel in reversed(rels)] == numbers[::-1]
    assert [os.lstat(view.path / "b" / rel).st_ino for rel in rels] == other


@pytest.mark.timeout(240)
def test_walks_past_the_inode_cap_see_stable_numbers_and_keep_hard_links(
    view_factory: ViewFactory, source: Path, test_root: Path
) -> None:
    dirs, files, pairs = 40, 100, 20
    _make_tree(source, dirs, files, pairs)
    view = view_factory(SMALL_CAP)
    view.ok(f"attach big {source}")
    big = view.path / "big"
    # find: no "file system loop" and no "directory changed during traversal".
    found = _run(["find", str(big), "-printf", "%i %p\n"])
    _clean(found)
    assert len(found.stdout.splitlines()) == 1 + dirs + dirs * files + pairs
    first_numbers = sorted(found.stdout.splitlines())
    again = _run(["find", str(big), "-printf", "%i %p\n"])
    _clean(again)
    assert sorted(again.stdout.splitlines()) == first_numbers
    copy = test_root / f"{source.name}-cp"
    try:
        _clean(_run(["cp", "-a", str(big), str(copy)]))
        _assert_links_kept(copy, dirs, pairs)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (make setup installs it)")
    copy = test_root / f"{source.name}-rsync"
    try:
        _clean(_run(["rsync", "-aH", f"{big}/", f"{copy}/"]))
        _assert_links_kept(copy, dirs, pairs)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


@pytest.mark.timeout(300)
def test_tar_of_50000_files_through_a_small_inode_cap_prints_no_warning(
    view_factory: ViewFactory, source: Path, test_root: Path
) -> None:
    t0 = time.monotonic()
    dirs, files, pairs = 100, 500, 50
    _make_tree(source, dirs, files, pairs)
    made_s = time.monotonic() - t0
    view = view_factory(SMALL_CAP)
    view.ok(f"attach big {source}")
    copy = test_root / f"{source.name}-tar"
    copy.mkdir()
    try:
        t0 = time.monotonic()
        out = subprocess.Popen(["tar", "-C", str(view.path / "big"), "-cf", "-", "."],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        inn = subprocess.run(["tar", "-C", str(copy), "-xf", "-"], stdin=out.stdout,
                             capture_output=True, text=True, timeout=240, check=False)
        assert out.stdout is not None and out.stderr is not None
        out.stdout.close()
        create_err = out.stderr.read().decode()
        assert out.wait(timeout=60) == 0 and create_err == "", create_err
        _clean(inn)
        tar_s = time.monotonic() - t0
        _assert_links_kept(copy, dirs, pairs)
        assert sum(len(fs) for _, _, fs in os.walk(copy)) == dirs * files + pairs
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    print(f"made 50,000 files natively in {made_s:.1f} s; tar c through the view {tar_s:.1f} s")


@pytest.mark.timeout(240)
def test_tar_extract_into_the_view_past_the_inode_cap_prints_no_warning(
    view_factory: ViewFactory, source: Path, test_root: Path
) -> None:
    """tar x checks, when it sets each directory's times at the end, that the directory
    still has the dev/ino it saw ("Directory renamed before its status could be extracted"
    otherwise): trimming in between must not change a number."""
    native = test_root / f"{source.name}-native"
    (native / "top").mkdir(parents=True)
    dirs, files, pairs = 30, 60, 10
    try:
        _make_tree(native / "top", dirs, files, pairs)
        for d in range(dirs):
            # A symlink with `..` in its target is made last, through a placeholder, and
            # then tar checks each directory's dev/ino before it sets its times.
            os.symlink("../d0/f0", native / "top" / f"d{d}" / "sym")
        view = view_factory(SMALL_CAP)
        view.ok(f"attach into {source}")
        packed = _run(["tar", "-C", str(native), "-cf", str(test_root / f"{native.name}.tar"),
                       "top"])
        _clean(packed)
        _clean(_run(["tar", "-C", str(view.path / "into"), "-xf",
                     str(test_root / f"{native.name}.tar")]))
        _assert_links_kept(source / "top", dirs, pairs)
        assert sum(len(fs) for _, _, fs in os.walk(source)) == dirs * (files + 1) + pairs
    finally:
        shutil.rmtree(native, ignore_errors=True)
        (test_root / f"{native.name}.tar").unlink(missing_ok=True)
