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

import itertools
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle, lazy_unmount
from tests.support.mounts import release_loops

FSTYPES = ("ext4", "tmpfs")
FS_BYTES = 64 << 20
_names = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Pair:
    """native: a plain directory; view_dir: VIEW/name, backed by backing (same filesystem)."""

    native: Path
    view_dir: Path
    backing: Path
    name: str
    fstype: str


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
    base = Path(tempfile.mkdtemp(prefix=f"ranges-{fstype}-", dir=test_root))
    base.chmod(0o755)
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


def attach_pair(view: ViewHandle, host: tuple[str, Path]) -> Pair:
    fstype, where = host
    parent = Path(tempfile.mkdtemp(prefix="pair-", dir=where))
    parent.chmod(0o755)
    native, backing = parent / "native", parent / "backing"
    native.mkdir(mode=0o755)
    backing.mkdir(mode=0o755)
    name = f"r{next(_names)}"
    view.ok(f"attach {name} {backing}")
    return Pair(native, view.path / name, backing, name, fstype)


@pytest.fixture
def pair(view: ViewHandle, host_fs: tuple[str, Path]) -> Iterator[Pair]:
    """A plain directory and a fresh subtree side by side on host_fs."""
    made = attach_pair(view, host_fs)
    yield made
    view.ok(f"detach {made.name}")

