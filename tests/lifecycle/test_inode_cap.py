"""Memory stays bounded on huge trees: past limits.max_inodes the daemon asks the kernel to
forget its coldest entries (SPEC 6), and walks still see every file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, wait_until


def _known_inodes(view: Path) -> int:
    text = (view / ".fusemount" / "metrics").read_text()
    found = re.search(r"^fusemount_inodes (\S+)$", text, re.MULTILINE)
    assert found, "metrics has no fusemount_inodes"
    return int(float(found.group(1)))


@pytest.mark.timeout(120)
def test_walk_past_max_inodes_keeps_the_table_bounded_and_sees_every_file(
    view_factory: ViewFactory, source: Path
) -> None:
    cap = 1024
    for d in range(40):
        (source / f"d{d}").mkdir()
        for f in range(100):
            os.mknod(source / f"d{d}" / f"f{f}")
    view = view_factory(f"[limits]\nmax_inodes = {cap}\n")
    view.ok(f"attach big {source}")
    seen = 0
    for _ in range(2):
        count = 0
        for top, _, files in os.walk(view.path / "big"):
            count += len(files)
            for name in files:
                os.lstat(os.path.join(top, name))
        assert count == 4000
        seen += count
    # The kernel forgets asynchronously; what matters is that the table came back under the
    # cap instead of holding all 4,041 objects the walks touched.
    assert wait_until(lambda: _known_inodes(view.path) <= cap, 20, 0.2)
    assert seen == 8000
