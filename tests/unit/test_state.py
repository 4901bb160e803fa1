"""The state file (SPEC 8): round trip, refusal of bad files, migrations, crash safety."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusemount.control import state as state_mod
from fusemount.control.state import CURRENT_VERSION, StateError, StateStore
from fusemount.core.records import (
    Access,
    Grant,
    GrantKind,
    Identity,
    Kind,
    Policy,
    State,
    SubtreeSpec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def rich_table() -> list[SubtreeSpec]:
    return [
        SubtreeSpec(
            name="data",
            kind=Kind.ATTACH,
            source='/srv/dätä dir/with "quotes" and\nnewline',
            identity=Identity(dev=2049, ino=1 << 40, mount_id=77, fstype="ext4"),
            policy=Policy(
                owner=1000,
                grants=(
                    Grant(GrantKind.USER, 1001, Access.RW),
                    Grant(GrantKind.GROUP, 100, Access.RO),
                    Grant(GrantKind.EVERYONE, 0, Access.RO),
                ),
                ro=False,
                squash_root=True,
            ),
            holders=("vol-1", "pod:abc.2"),
            created_with_holder=True,
            expire_s=3600.5,
        ),
        SubtreeSpec(
            name="scratch",
            kind=Kind.MOUNT,
            source="none",
            identity=Identity(dev=51, ino=1, mount_id=900, fstype="tmpfs"),
            policy=Policy(owner=0, ro=True),
            fstype="tmpfs",
            options="size=64m,mode=0755",
        ),
        SubtreeSpec(
            name="gone.1",
            kind=Kind.ATTACH,
            source="/srv/gone",
            identity=None,
            policy=Policy(owner=0),
            state=State.FAILED,
            reason="source identity changed (dev 1 ino 2 -> dev 1 ino 3)",
        ),
    ]


def test_state_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    table = rich_table()
    store.save(table)
    assert StateStore(store.path).load() == table


def test_state_file_is_explicit_json_with_enums_by_value(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    store.save(rich_table())
    doc = json.loads((tmp_path / "state.json").read_text("utf-8"))
    assert doc["format"] == "fusemount-state"
    assert doc["version"] == CURRENT_VERSION
    first = doc["subtrees"][0]
    assert first["kind"] == "attach"
    assert first["state"] == "attached"
    assert first["policy"]["grants"][1] == {"kind": "group", "id": 100, "access": 1}
    assert doc["subtrees"][2]["identity"] is None


def test_state_save_of_empty_table_loads_empty(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    store.save([])
    assert store.load() == []


def test_state_missing_file_loads_empty_and_creates_parent_0700(tmp_path: Path) -> None:
    parent = tmp_path / "var" / "lib" / "fusemount"
    store = StateStore(str(parent / "state.json"))
    assert store.load() == []
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
    assert not (parent / "state.json").exists()


def test_state_save_creates_parent_0700_and_file_0600_without_leftovers(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "new"
    store = StateStore(str(parent / "state.json"))
    store.save(rich_table())
    store.save(rich_table()[:1])
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((parent / "state.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in parent.iterdir()) == ["state.json"]
    assert store.load() == rich_table()[:1]


def test_state_save_refuses_duplicate_names(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "state.json"))
    spec = rich_table()[0]
    with pytest.raises(ValueError, match="duplicate"):
        store.save([spec, spec])
    assert not (tmp_path / "state.json").exists()


def _doc(
    *,
    top: dict[str, object] | None = None,
    subtree: dict[str, object] | None = None,
    identity: dict[str, object] | None = None,
    policy: dict[str, object] | None = None,
    drop: tuple[str, ...] = (),
    copies: int = 1,
) -> dict[str, object]:
    """A valid version-1 document, with the given fields replaced or dropped."""
    entry: dict[str, object] = {
        "name": "a",
        "kind": "attach",
        "source": "/srv/a",
        "identity": {"dev": 1, "ino": 2, "mount_id": 3, "fstype": "ext4"} | (identity or {}),
        "policy": {"owner": 0} | (policy or {}),
    } | (subtree or {})
    for key in drop:
        del entry[key]
    doc: dict[str, object] = {"format": "fusemount-state", "version": 1}
    return doc | {"subtrees": [entry] * copies} | (top or {})


def _bytes(doc: object) -> bytes:
    return json.dumps(doc).encode()


CORRUPT_FILES: dict[str, bytes] = {
    "garbage": b"\x00\x01 not json at all",
    "empty": b"",
    "whitespace": b"  \n",
    "truncated": _bytes(_doc())[:-7],
    "not_utf8": b'{"format": "\xff"}',
    "nan": _bytes(_doc()).replace(b'"owner": 0', b'"owner": NaN'),
    "scalar_top": b"42",
    "wrong_format": _bytes(_doc(top={"format": "something-else"})),
    "string_version": _bytes(_doc(top={"version": "1"})),
    "subtrees_not_list": _bytes(_doc(top={"subtrees": {}})),
    "bad_kind": _bytes(_doc(subtree={"kind": "bind"})),
    "bad_name": _bytes(_doc(subtree={"name": "../etc"})),
    "negative_ino": _bytes(_doc(identity={"ino": -1})),
    "bool_as_owner": _bytes(_doc(policy={"owner": True})),
    "unknown_field": _bytes(_doc(subtree={"colour": "blue"})),
    "missing_policy": _bytes(_doc(drop=("policy",))),
    "bad_access": _bytes(_doc(policy={"grants": [{"kind": "user", "id": 5, "access": 7}]})),
    "bad_holder": _bytes(_doc(subtree={"holders": ["has space"]})),
    "duplicate_name": _bytes(_doc(copies=2)),
}


@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_state_invalid_file_is_refused_copied_aside_and_left_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    before = path.stat()
    with pytest.raises(StateError) as info:
        StateStore(str(path)).load()
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert path.read_bytes() == content
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    copies = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(copies) == 1
    assert copies[0].read_bytes() == content
    assert str(copies[0]) in message
    assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600


def test_state_second_refusal_keeps_a_second_copy(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"{")
    store = StateStore(str(path))
    for _ in range(2):
        with pytest.raises(StateError):
            store.load()
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 2


def test_state_unknown_future_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    doc = _doc(top={"version": CURRENT_VERSION + 1})
    path.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="newer"):
        StateStore(str(path)).load()
    assert json.loads(path.read_text()) == doc


def test_state_dangling_symlink_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(StateError, match="dangling"):
        StateStore(str(path)).load()


def test_state_version_0_bare_list_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    subtrees = _doc()["subtrees"]
    path.write_text(json.dumps(subtrees))
    store = StateStore(str(path))
    assert store.load() == [
        SubtreeSpec(
            name="a",
            kind=Kind.ATTACH,
            source="/srv/a",
            identity=Identity(dev=1, ino=2, mount_id=3, fstype="ext4"),
            policy=Policy(owner=0),
        )
    ]
    # Loading never rewrites; the next save writes the current version.
    assert json.loads(path.read_text()) == subtrees
    store.save(store.load())
    assert json.loads(path.read_text())["version"] == CURRENT_VERSION


def test_state_migrations_cover_every_older_version() -> None:
    assert sorted(state_mod._MIGRATIONS) == list(range(CURRENT_VERSION))


def test_state_failed_save_keeps_old_file_and_removes_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(str(path))
    store.save(rich_table()[:1])
    old = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError) as info:
        store.save(rich_table())
    assert info.value.errno == 28
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pytest
    from fusemount.core.records import Kind, Policy, SubtreeSpec
    from fusemount.control.state import StateStore

    path, point = sys.argv[1], sys.argv[2]
    new = [SubtreeSpec(name=f"new{i}", kind=Kind.ATTACH, source=f"/srv/{i}",
                       identity=None, policy=Policy(owner=i)) for i in range(200)]
    real_write, real_fsync = os.write, os.fsync
    fsyncs = []

    def half_write(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        os._exit(9)

    def die_on_fsync(n):
        def fsync(fd):
            fsyncs.append(fd)
            if len(fsyncs) == n:
                os._exit(9)
            real_fsync(fd)
        return fsync

    def die(*args):
        os._exit(9)

    mp = pytest.MonkeyPatch()
    if point == "mid_write":
        mp.setattr(os, "write", half_write)
    elif point == "before_fsync":
        mp.setattr(os, "fsync", die_on_fsync(1))
    elif point == "before_rename":
        mp.setattr(os, "replace", die)
    elif point == "before_dir_fsync":
        mp.setattr(os, "fsync", die_on_fsync(2))
    StateStore(path).save(new)
    sys.exit(0)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("point", "expect_new"),
    [
        ("mid_write", False),
        ("before_fsync", False),
        ("before_rename", False),
        ("before_dir_fsync", True),
    ],
)
def test_state_process_killed_during_save_leaves_old_or_new_table(
    tmp_path: Path, point: str, expect_new: bool
) -> None:
    path = tmp_path / "state.json"
    old = rich_table()
    StateStore(str(path)).save(old)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), point],
        env=env,
        capture_output=True,
        timeout=50,
    )
    assert proc.returncode == 9, proc.stderr.decode()
    loaded = StateStore(str(path)).load()
    if expect_new:
        assert [s.name for s in loaded] == [f"new{i}" for i in range(200)]
    else:
        assert loaded == old
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    if expect_new:
        assert leftovers == []
    else:
        assert len(leftovers) == 1 and leftovers[0].startswith(".state.json.tmp-")
        # The leftover is never mistaken for the table and does not block the next save.
        StateStore(str(path)).save(old[:1])
        assert StateStore(str(path)).load() == old[:1]


_text = st.text(st.characters(codec="utf-8"), max_size=20)
_uint = st.integers(min_value=0, max_value=2**64 - 1)
_grants = st.builds(Grant, st.sampled_from(GrantKind), _uint, st.sampled_from(Access))
_specs = st.builds(
    SubtreeSpec,
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    kind=st.sampled_from(Kind),
    source=_text,
    identity=st.none() | st.builds(Identity, _uint, _uint, _uint, _text),
    policy=st.builds(
        Policy, _uint, st.lists(_grants, max_size=4).map(tuple), st.booleans(), st.booleans()
    ),
    fstype=_text,
    options=_text,
    holders=st.lists(
        st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True), max_size=4, unique=True
    ).map(tuple),
    created_with_holder=st.booleans(),
    expire_s=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    state=st.sampled_from(State),
    reason=_text,
)


@settings(max_examples=60, deadline=None)
@given(table=st.lists(_specs, max_size=5, unique_by=lambda s: s.name))
def test_state_any_table_survives_a_round_trip(table: list[SubtreeSpec]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(os.path.join(tmp, "state.json"))
        store.save(table)
        assert store.load() == table
