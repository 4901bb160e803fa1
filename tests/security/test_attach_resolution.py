"""Attacks on `attach` itself: sources reached through symlinks, non-directories, bad names.

SPEC 4: SOURCE is resolved once without following any symlink in any component (ELOOP), must
be a directory (ENOTDIR), must exist (ENOENT) and must be absolute (EINVAL); NAME must match
`[A-Za-z0-9][A-Za-z0-9._-]{0,63}` (EINVAL). A refused command changes nothing: every test
checks the table, the view root and the state file afterwards.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.escape import Trees


@pytest.fixture
def quiet_view(view: ViewHandle, trees: Trees) -> Iterator[ViewHandle]:
    """A view with one subtree; afterwards the table, root and state must be as they were."""
    view.ok(f"attach data {trees.source}")
    table = view.mounts_json()
    state = view.state.read_bytes()
    yield view
    assert view.mounts_json() == table, "a refused attach changed the table"
    assert sorted(os.listdir(view.path)) == [".fusemount", "data"]
    assert view.state.read_bytes() == state, "a refused attach changed the state file"


@pytest.mark.timeout(60)
def test_attach_through_symlinked_intermediate_component_fails_eloop(
    quiet_view: ViewHandle, trees: Trees
) -> None:
    link = trees.source.parent / (trees.source.name + ".link")
    link.symlink_to(trees.source)
    assert quiet_view.err(f"attach evil {link}/sub") == errno.ELOOP
    assert quiet_view.err(f"attach evil {link}/sub/deep") == errno.ELOOP


@pytest.mark.timeout(60)
def test_attach_of_symlink_as_last_component_fails_eloop(
    quiet_view: ViewHandle, trees: Trees
) -> None:
    (trees.source / "lnk").symlink_to(trees.decoy)
    (trees.source / "rel").symlink_to("sub")
    assert quiet_view.err(f"attach evil {trees.source}/lnk") == errno.ELOOP
    assert quiet_view.err(f"attach evil {trees.source}/rel") == errno.ELOOP
    assert quiet_view.err(f"attach evil {trees.source}/lnk/") == errno.ELOOP


@pytest.mark.timeout(60)
def test_attach_through_proc_magic_link_fails_eloop(
    quiet_view: ViewHandle, trees: Trees
) -> None:
    # /proc/self/cwd and /proc/self/root are magic links into the *daemon's* own view.
    assert quiet_view.err("attach evil /proc/self/cwd") == errno.ELOOP
    assert quiet_view.err(f"attach evil /proc/self/root{trees.decoy}") == errno.ELOOP


@pytest.mark.timeout(60)
def test_attach_of_regular_file_as_source_fails_enotdir(
    quiet_view: ViewHandle, trees: Trees
) -> None:
    assert quiet_view.err(f"attach evil {trees.source}/hello.txt") == errno.ENOTDIR


@pytest.mark.timeout(60)
def test_attach_of_missing_source_fails_enoent(quiet_view: ViewHandle, trees: Trees) -> None:
    assert quiet_view.err(f"attach evil {trees.source}/missing") == errno.ENOENT


@pytest.mark.timeout(60)
def test_attach_of_relative_source_fails_einval(quiet_view: ViewHandle) -> None:
    got = {rel: quiet_view.err(f"attach evil {rel}") for rel in ("sub", "./sub", "../sub", "tmp")}
    assert got == dict.fromkeys(got, errno.EINVAL)


HOSTILE_NAMES = {
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "leading_dot": ".hidden",
    "leading_dash": "-x",
    "leading_underscore": "_x",
    "too_long_65": "a" * 65,
    "unicode": "caf\u00e9",
    "fullwidth_digit": "\uff11abc",
    "control_file_name": ".fusemount",
    "space": "'a b'",
    "empty": "''",
    "tab": "'a\tb'",
}


@pytest.mark.timeout(60)
def test_attach_under_hostile_name_fails_einval(quiet_view: ViewHandle, trees: Trees) -> None:
    got = {what: errno.errorcode[quiet_view.err(f"attach {name} {trees.source}")]
           for what, name in HOSTILE_NAMES.items()}
    assert got == dict.fromkeys(got, "EINVAL")


@pytest.mark.timeout(60)
def test_attach_with_nul_in_source_fails_einval(quiet_view: ViewHandle, trees: Trees) -> None:
    assert quiet_view.err(b"attach evil " + os.fsencode(trees.source) + b"\0/sub") == errno.EINVAL


@pytest.mark.timeout(60)
def test_longest_valid_name_is_accepted(view: ViewHandle, trees: Trees) -> None:
    """The control for the 65-character refusal: 64 characters is the limit, not less."""
    name = "a" * 64
    view.ok(f"attach {name} {trees.source}")
    assert (Path(view.path) / name / "hello.txt").exists()
