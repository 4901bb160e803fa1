"""Fixtures of the ranges suite: a host ext4 (loop) or tmpfs filesystem, and per test a plain
directory and a subtree on that same filesystem.

Job: mount one small ext4 image and one tmpfs per module on the host (the sources of the
differential tests need a native twin on the same filesystem, which the daemon's detached
`mount` cannot give), hand each test `native` and `backing` directories side by side on it,
with `backing` attached as a fresh subtree of the test's own view, and unmount everything
at the end. Never: leave a host mount or a loop device behind, or unmount while the view
still holds the subtree.
Serves the test side of SPEC 3 (statfs, fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range;
issue 14).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pairs
from tests.support.daemon import ViewHandle, lazy_unmount
from tests.support.dirs import fresh_dir
from tests.support.mounts import release_loops
from tests.support.pairs import Pair
from tests.support.ranges import FS_BYTES, attach_pair

FSTYPES = ("ext4", "tmpfs")


def _mount(fstype: str, where: Path, image: Path) -> None:
    if fstype == "ext4":
        argv = ["mount", "-t", "ext4", "-o", "loop", str(image), str(where)]
    else:
        argv = ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs", str(where)]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module", params=FSTYPES)
def host_fs(request: pytest.FixtureRequest, test_root: Path) -> Iterator[tuple[str, Path]]:
    """(fstype, mount point) of a 64 MiB filesystem mounted on the host for this module."""
    fstype: str = request.param
    base = fresh_dir(test_root, f"ranges-{fstype}-")
    where = base / "mnt"
    where.mkdir(mode=0o755)
    image = base / "fs.img"
    if fstype == "ext4":
        with open(image, "wb") as f:
            f.truncate(FS_BYTES)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(image)], check=True,
                       capture_output=True, timeout=60)
    _mount(fstype, where, image)
    try:
        where.chmod(0o755)
        yield fstype, where
    finally:
        lazy_unmount(where)
        if fstype == "ext4":
            release_loops(image)


@pytest.fixture
def pair(view: ViewHandle, host_fs: tuple[str, Path]) -> Iterator[Pair]:
    """A plain directory and a fresh subtree side by side on host_fs."""
    made = attach_pair(view, host_fs)
    yield made
    pairs.detach_pair(view, made)
