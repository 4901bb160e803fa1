"""The posix suite, differential: every case gives the same summary natively and in the view.

Each case of cases.CASES runs on a plain directory and on a freshly attached subtree; the
summaries (values and errno names) must be equal, and the subtree's backing directory must
end up exactly like the plain one (the view wrote what it reported). The cases of
cases.RULES are where SPEC 3/4 makes the view differ on purpose; they run on the view only,
against the summary written next to them. Serves SPEC 3 and 4.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tests.posix.cases import CASES, JSON, RULES, snapshot
from tests.support.daemon import ViewHandle
from tests.support.pairs import Pair, attach_pair, detach_pair

pytestmark = pytest.mark.needs_root  # the daemon mounts a FUSE view


def _show(summary: JSON) -> str:
    return json.dumps(summary, indent=1, sort_keys=True)


# Cases that look at the case directory itself, VIEW/NAME: in gate mode it shows the gate.
ROOT_ATTRIBUTE_CASES = frozenset({
    "mkdir_and_errors", "rename_directories", "rmdir_and_errors", "stat_regular_file",
    "subtree_root_attributes",
})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_native(name: str, pair: Pair, posix_mode: str) -> None:
    if posix_mode == "gate" and name in ROOT_ATTRIBUTE_CASES:
        pytest.skip("inspects VIEW/NAME itself, which shows its gate (SPEC 5)")
    native = CASES[name](pair.native)
    viewed = CASES[name](pair.view_dir)
    assert viewed == native, f"{name}: view differs from native\nnative: {_show(native)}\n" \
                             f"view:   {_show(viewed)}"
    assert snapshot(pair.backing, pair.view_dir) == snapshot(pair.native), \
        f"{name}: the source differs from the native directory"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_holds_in_view(name: str, pair: Pair) -> None:
    fn, expected = RULES[name]
    got = fn(pair.view_dir)
    assert got == expected, f"{name}\nexpected: {_show(expected)}\ngot:      {_show(got)}"
    assert os.listdir(pair.backing) == [], f"{name}: the rule left files in the source"


@pytest.mark.timeout(60)
def test_rename_and_link_between_subtrees_are_exdev(
    posix_view: ViewHandle, pair: Pair, source: Path
) -> None:
    (source / "second").mkdir()
    other = attach_pair(posix_view, source / "second", "posix")
    try:
        (pair.view_dir / "f").write_bytes(b"x")
        (pair.view_dir / "sub").mkdir()
        results = {
            "rename": _errno_of(lambda: os.rename(pair.view_dir / "f", other.view_dir / "f")),
            "rename_dir": _errno_of(
                lambda: os.rename(pair.view_dir / "sub", other.view_dir / "sub")),
            "link": _errno_of(lambda: os.link(pair.view_dir / "f", other.view_dir / "f")),
        }
        assert results == {"rename": errno.EXDEV, "rename_dir": errno.EXDEV,
                           "link": errno.EXDEV}
        assert sorted(os.listdir(pair.backing)) == ["f", "sub"]
        assert os.listdir(other.backing) == []
    finally:
        detach_pair(posix_view, other)


def _errno_of(fn: object) -> int:
    assert callable(fn)
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0
