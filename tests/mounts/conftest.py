"""Fixtures for the `mount` suite: an ext4 image whose loop devices are always let go.

Job: hand a test a fresh 32 MiB sparse ext4 image under the `source` directory, and at
teardown mark every loop device still bound to it for release (autoclear), whichever of the
image and the daemon goes first. Never: touch a loop device bound to anything else.
Serves the test side of SPEC 4 `mount`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounts import make_ext4_image, release_loops


@pytest.fixture
def image(source: Path) -> Iterator[Path]:
    """SOURCE/fs.img: an empty ext4 filesystem on a sparse file."""
    path = make_ext4_image(source / "fs.img")
    try:
        yield path
    finally:
        release_loops(path)
