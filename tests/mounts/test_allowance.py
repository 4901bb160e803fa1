"""Writes through the view spend the caller's disk allowance, not root's (SPEC 6; issue 12 item 7).

Differential on two identical ext4 images with half their blocks reserved for root
(mkfs.ext4 -m 50): alice fills one natively until ENOSPC, and the other through the view;
she must be stopped at the same point, not write on into root's reserve (which a write made
with the daemon's fsuid 0 or CAP_SYS_RESOURCE would). Root still reaches the reserve.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.escape import mounted
from tests.support.mounts import release_loops
from tests.support.users import User, Users, py_as

pytestmark = pytest.mark.needs_root

IMAGE_BYTES = 32 << 20
CHUNK = 64 << 10

# Writes CHUNK-sized pieces to PATH until a write fails; prints bytes written and the errno.
_FILL = r'''
fd = os.open(PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
total, failure, chunk = 0, 0, b"z" * CHUNK
try:
    while total < LIMIT:
        try:
            total += os.write(fd, chunk)
        except OSError as exc:
            failure = errno.errorcode[exc.errno]
            break
finally:
    os.close(fd)
print(json.dumps([total, failure]))
'''


def _fill(user: User, path: Path) -> tuple[int, str]:
    code = f"PATH = {str(path)!r}\nCHUNK = {CHUNK}\nLIMIT = {IMAGE_BYTES}\n" + _FILL
    got = py_as(user, code, timeout_s=90)
    assert isinstance(got, list)
    return int(got[0]), str(got[1])


@contextmanager
def _reserved_ext4(where: Path, owner: User) -> Iterator[Path]:
    """An ext4 image with 50% root-reserved blocks, mounted at where, root dir owned by owner."""
    image = where.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "50", str(image)], check=True,
                   capture_output=True, timeout=60)
    where.mkdir()
    try:
        with mounted(["-o", "loop", str(image)], where):
            os.chown(where, owner.uid, owner.gid)
            yield where
    finally:
        release_loops(image)


@pytest.mark.timeout(180)
def test_write_through_view_stops_at_enospc_where_native_does(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    alice = users.alice
    with ExitStack() as stack:
        native = stack.enter_context(_reserved_ext4(source / "native", alice))
        backing = stack.enter_context(_reserved_ext4(source / "backing", alice))
        view = view_factory()
        view.ok(f"attach disk {backing} owner={alice.name}")
        want = _fill(alice, native / "fill")
        got = _fill(alice, view.path / "disk" / "fill")
        assert want[1] == "ENOSPC", want
        assert got[1] == "ENOSPC", got
        # Same point, give or take a few blocks of metadata: the reserve is 16 MiB.
        assert abs(got[0] - want[0]) <= 1 << 20, (want, got)
        # Root may still write into its reserve, natively and through the view.
        root = User("root", 0, 0, frozenset())
        assert _fill(root, native / "root-fill")[0] > 4 << 20
        assert _fill(root, view.path / "disk" / "root-fill")[0] > 4 << 20
        view.ok("detach disk")
