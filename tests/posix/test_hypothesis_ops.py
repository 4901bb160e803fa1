"""Random operation sequences give the same outcomes natively and through the view.

Hypothesis draws 20-40 steps of create/write/append/truncate/rename(2)/link/unlink/mkdir/
rmdir/symlink/chmod/stat/lstat/listdir/read/readlink over a small name space two
directories deep, starting from a small populated tree, so names collide, replace and vanish
often. Each example runs in a fresh
pair of empty directories; every step's outcome (value or errno name) must match, and so
must the final tree seen through the view and in the source. Serves SPEC 3.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusemount.host import syscalls
from tests.posix.cases import JSON, info, opened, outcome, snapshot
from tests.support.pairs import Pair

pytestmark = pytest.mark.needs_root  # the daemon mounts a FUSE view

PATHS = ("a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e")
TARGETS = ("a", "b", "d", "d/a", "e/a", "missing", ".")
MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o1777, 0o000)
RENAME_FLAGS = (0, 0, syscalls.RENAME_NOREPLACE, syscalls.RENAME_EXCHANGE)

_examples = itertools.count()


@dataclass(frozen=True, slots=True)
class Step:
    op: str
    path: str
    other: str = ""
    data: bytes = b""
    num: int = 0


def _paths() -> st.SearchStrategy[str]:
    return st.sampled_from(PATHS)


_steps = st.one_of(
    st.builds(Step, st.just("create"), _paths(), data=st.binary(max_size=24),
              num=st.sampled_from(MODES)),
    st.builds(Step, st.just("create"), _paths(), data=st.binary(max_size=24),
              num=st.sampled_from(MODES)),
    st.builds(Step, st.just("mkdir"), _paths(), num=st.sampled_from(MODES)),
    st.builds(Step, st.just("write"), _paths(), data=st.binary(min_size=1, max_size=24),
              num=st.integers(0, 40)),
    st.builds(Step, st.just("append"), _paths(), data=st.binary(min_size=1, max_size=24)),
    st.builds(Step, st.just("truncate"), _paths(), num=st.integers(0, 5000)),
    st.builds(Step, st.just("rename"), _paths(), _paths(), num=st.sampled_from(RENAME_FLAGS)),
    st.builds(Step, st.just("link"), _paths(), _paths()),
    st.builds(Step, st.just("unlink"), _paths()),
    st.builds(Step, st.just("mkdir"), _paths(), num=st.sampled_from(MODES)),
    st.builds(Step, st.just("rmdir"), _paths()),
    st.builds(Step, st.just("symlink"), _paths(), st.sampled_from(TARGETS)),
    st.builds(Step, st.just("chmod"), _paths(), num=st.sampled_from(MODES)),
    st.builds(Step, st.just("stat"), _paths()),
    st.builds(Step, st.just("lstat"), _paths()),
    st.builds(Step, st.just("listdir"), st.sampled_from(("d", "d/e", "e"))),
    st.builds(Step, st.just("read"), _paths()),
    st.builds(Step, st.just("readlink"), _paths()),
)


# Every example starts from this populated tree, so that random steps hit existing names
# (replace, collide, traverse a symlink) instead of mostly failing with ENOENT.
SETUP = (
    Step("mkdir", "d", num=0o755),
    Step("mkdir", "d/e", num=0o755),
    Step("create", "a", data=b"alpha", num=0o644),
    Step("create", "d/a", data=b"delta-a", num=0o600),
    Step("symlink", "e", "d"),
)


def _write_at(path: Path, flags: int, data: bytes, offset: int | None,
              mode: int = 0o644) -> JSON:
    with opened(path, flags, mode) as fd:
        return os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)


def _read(path: Path) -> JSON:
    with opened(path, os.O_RDONLY) as fd:
        return os.read(fd, 1 << 16).hex()


def apply(root: Path, step: Step) -> JSON:
    """Perform one step under root; its value, or the errno name it failed with."""
    p, q = root / step.path, root / step.other
    match step.op:
        case "create":
            return outcome(lambda: _write_at(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, step.data,
                                             None, step.num))
        case "write":
            return outcome(lambda: _write_at(p, os.O_WRONLY, step.data, step.num))
        case "append":
            return outcome(lambda: _write_at(p, os.O_WRONLY | os.O_APPEND, step.data, None))
        case "truncate":
            return outcome(lambda: os.truncate(p, step.num))
        case "rename":
            return outcome(lambda: syscalls.renameat2(
                syscalls.AT_FDCWD, os.fsencode(p), syscalls.AT_FDCWD, os.fsencode(q), step.num))
        case "link":
            return outcome(lambda: os.link(p, q, follow_symlinks=False))
        case "unlink":
            return outcome(lambda: os.unlink(p))
        case "mkdir":
            return outcome(lambda: os.mkdir(p, step.num))
        case "rmdir":
            return outcome(lambda: os.rmdir(p))
        case "symlink":
            return outcome(lambda: os.symlink(step.other, p))
        case "chmod":
            return outcome(lambda: os.chmod(p, step.num))
        case "stat":
            return outcome(lambda: info(p))
        case "lstat":
            return outcome(lambda: info(p, follow=False))
        case "listdir":
            return outcome(lambda: sorted(os.listdir(p)))
        case "read":
            return outcome(lambda: _read(p))
        case "readlink":
            return outcome(lambda: os.readlink(p))
    raise AssertionError(f"unknown step {step}")


@pytest.mark.timeout(300)
@settings(max_examples=50, deadline=None, database=None)
@given(steps=st.lists(_steps, min_size=20, max_size=40))
def test_random_operation_sequences_match_native(module_pair: Pair, steps: list[Step]) -> None:
    name = f"ex{next(_examples)}"
    native, viewed = module_pair.native / name, module_pair.view_dir / name
    native.mkdir(0o755)
    viewed.mkdir(0o755)
    history: list[str] = []
    for step in (*SETUP, *steps):
        want = apply(native, step)
        got = apply(viewed, step)
        history.append(f"{step} -> native {json.dumps(want)} view {json.dumps(got)}")
        assert got == want, "steps so far:\n" + "\n".join(history)
    assert snapshot(viewed) == snapshot(native), "final tree differs; steps:\n" + "\n".join(
        history)
    assert snapshot(module_pair.backing / name, viewed) == snapshot(native), (
        "source differs from native; steps:\n" + "\n".join(history))
