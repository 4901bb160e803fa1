"""Fixtures for the attack tests: an original source tree and a decoy full of SECRETs.

Never: put the decoy inside the source or the view, or leave anything mounted on either
(tests mount over them only inside `escape.mounted`, which always unmounts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dirs import fresh_dir
from tests.support.escape import Trees, build_decoy, build_original


@pytest.fixture
def trees(source: Path, test_root: Path) -> Trees:
    """`source` filled with the original layout, and a decoy directory beside it."""
    build_original(source)
    decoy = fresh_dir(test_root, "decoy-")
    build_decoy(decoy)
    return Trees(source=source, decoy=decoy)
