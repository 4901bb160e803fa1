"""Fresh directories for tests: world-traversable, below the session's test root.

Job: make a new empty directory of mode 0755 (pytest's own tmp dirs are root-only, useless to
the test users and to a view's sources), optionally owned by a test user. Never: reuse a
directory, or make one outside the parent it is given (the session teardown finds leftovers
only under test_root).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.users import User

SourceFactory = Callable[[], Path]


def fresh_dir(parent: Path, prefix: str, owner: User | None = None) -> Path:
    """A new empty directory parent/PREFIXxxxx, mode 0755, owned by root or by owner."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)  # mkdtemp makes 0700: test users must reach views and sources below it
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return path
