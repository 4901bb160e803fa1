"""Inside a subtree the backing modes decide exactly as natively (SPEC 5).

For every directory mode and owner in the matrix, alice, bob (both in fmt_team) and carol
(outsider) run the same operations on a directory straight on the source and on an identical
one through the view. The subtree gives all three read-write (owner root,
allow=@fmt_team:rw,fmt_carol:rw), so only the backing modes can refuse, and every errno must
match the native one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.permissions import Outcome, config, dump, make_dir, make_file, probe_many
from tests.support.users import User, Users

pytestmark = pytest.mark.needs_root

MODES = (0o700, 0o750, 0o770, 0o1777, 0o2775)
OWNERS = ("root", "alice")
OPERATIONS = (
    "stat", "listdir", "create", "read", "write", "unlink", "rename", "mkdir", "chmod",
    "sticky_unlink",
)

# Runs as the user; CASES is a JSON list of [key, directory]. Each operation has its own
# target, so the outcome of one never depends on another having run.
_SNIPPET = '''
out = {}
for key, d in json.loads(CASES):
    j = lambda name: os.path.join(d, name)
    out[key] = {
        "stat": errno_of(lambda: os.stat(j("f"))),
        "listdir": errno_of(lambda: os.listdir(d)),
        "create": errno_of(lambda: create_file(j("new"))),
        "read": errno_of(lambda: read_file(j("f"))),
        "write": errno_of(lambda: append_file(j("f"))),
        "unlink": errno_of(lambda: os.unlink(j("u"))),
        "rename": errno_of(lambda: os.rename(j("r"), j("r2"))),
        "mkdir": errno_of(lambda: os.mkdir(j("newdir"))),
        "chmod": errno_of(lambda: os.chmod(j("c"), 0o600)),
        "sticky_unlink": errno_of(lambda: os.unlink(j("s"))),
    }
print(json.dumps(out))
'''


def _case_key(mode: int, owner: str) -> str:
    return f"{mode:04o}-{owner}"


def _build(path: Path, mode: int, owner: User, other: User, users: Users) -> None:
    """A directory of mode and owner (group fmt_team) with one target per operation.

    Files belong to the directory's owner (group fmt_team) except `s`, which belongs to
    another user than the one who will act, for the sticky-bit case.
    """
    team = users.team.gid
    path.mkdir()
    make_file(path / "f", 0o664, owner.uid, team)
    for name in ("u", "r", "c"):
        make_file(path / name, 0o644, owner.uid, team)
    make_file(path / "s", 0o666, other.uid, other.gid)
    os.chown(path, owner.uid, team)
    path.chmod(mode)  # last: root made the contents whatever the mode


@pytest.mark.timeout(120)
def test_differential_backing_modes_decide_like_native(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view = view_factory(config_text=config())
    make_dir(source / "native", 0o755)
    make_dir(source / "viewed", 0o755)
    owners = {"root": User("root", 0, 0, frozenset()), "alice": users.alice}
    actors = (users.alice, users.bob, users.carol)
    cases: dict[tuple[str, str], list[list[str]]] = {}
    for user in actors:
        other = users.bob if user is users.alice else users.alice
        for side in ("native", "viewed"):
            entries: list[list[str]] = []
            for mode in MODES:
                for owner_name in OWNERS:
                    key = _case_key(mode, owner_name)
                    rel = Path(side) / f"{key}-{user.name}"
                    _build(source / rel, mode, owners[owner_name], other, users)
                    base = source if side == "native" else view.path / "diff"
                    entries.append([key, str(base / rel)])
            cases[(user.name, side)] = entries
    view.ok(f"attach diff {source} allow=@{users.team.name}:rw,{users.carol.name}:rw")

    results: dict[tuple[str, str], dict[str, dict[str, Outcome]]] = {}
    for user in actors:
        for side in ("native", "viewed"):
            code = f"CASES = {json.dumps(json.dumps(cases[(user.name, side)]))}\n" + _SNIPPET
            results[(user.name, side)] = probe_many(user, code)

    # The matrix must exercise both answers, or agreeing would prove nothing.
    native_alice = results[(users.alice.name, "native")]
    assert native_alice[_case_key(0o700, "root")]["create"] == "EACCES"
    assert native_alice[_case_key(0o700, "alice")]["create"] == 0
    assert native_alice[_case_key(0o1777, "root")]["sticky_unlink"] == "EPERM"
    assert results[(users.carol.name, "native")][_case_key(0o770, "alice")]["stat"] == "EACCES"

    mismatches: list[str] = []
    for user in actors:
        native, viewed = results[(user.name, "native")], results[(user.name, "viewed")]
        for mode in MODES:
            for owner_name in OWNERS:
                key = _case_key(mode, owner_name)
                for op in OPERATIONS:
                    if native[key][op] != viewed[key][op]:
                        mismatches.append(
                            f"{user.name} dir {key} {op}: native {native[key][op]}, "
                            f"view {viewed[key][op]}"
                        )
    assert not mismatches, "\n".join(mismatches) + "\nnative alice:\n" + dump(native_alice)

    # Same effects, not only the same answers: the two trees ended up alike.
    for user in actors:
        for mode in MODES:
            for owner_name in OWNERS:
                name = f"{_case_key(mode, owner_name)}-{user.name}"
                native_tree = _snapshot(source / "native" / name)
                viewed_tree = _snapshot(source / "viewed" / name)
                assert native_tree == viewed_tree, name


def _snapshot(path: Path) -> list[tuple[str, int, int, int]]:
    """Names, owners and modes in a directory, as root sees them on the backing store."""
    out = []
    for name in sorted(os.listdir(path)):
        st = os.lstat(path / name)
        out.append((name, st.st_uid, st.st_gid, st.st_mode))
    return out
