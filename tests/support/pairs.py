"""Native-vs-view pairs: a plain directory and a freshly attached subtree, side by side.

Job: for the differential suites (posix/, ranges/), make parent/native and parent/backing,
attach backing as a new subtree of a live view, and detach it afterwards. A test runs the same
steps in `native` and in `view_dir` and compares the answers. Never: share a subtree between
two pairs, or detach by force without failing the test.
Serves the test side of SPEC 3 (the view answers as the source's own filesystem would).
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle

_numbers = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Pair:
    """native: a plain directory; view_dir: VIEW/name, backed by backing (same filesystem)."""

    native: Path
    view_dir: Path
    backing: Path
    name: str


def attach_pair(view: ViewHandle, parent: Path, prefix: str) -> Pair:
    """Make parent/native and parent/backing (mode 0755), and attach backing as a new subtree
    named PREFIX<n>."""
    native = parent / "native"
    backing = parent / "backing"
    for directory in (native, backing):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)  # whatever the umask: test users compare both sides
    name = f"{prefix}{next(_numbers)}"
    view.ok(f"attach {name} {backing}")
    return Pair(native, view.path / name, backing, name)


def detach_pair(view: ViewHandle, pair: Pair) -> None:
    """Detach the pair's subtree; a test that left a file open gets a forced detach and a
    failure, because every test must close what it opened."""
    reply = view.ctl(f"detach {pair.name}")
    if reply.errno == errno.EBUSY:
        view.ok(f"detach {pair.name} force")
        pytest.fail(f"{pair.name}: files were still open under the subtree after the test")
    assert reply.errno is None, reply.describe(f"detach {pair.name}")
