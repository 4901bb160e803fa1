"""Attacks on the source path while the daemon is down: restart must not attach the decoy.

SPEC 8: `serve` re-attaches every subtree from the state file running every check again; a
source whose identity (dev, ino) changed, or that fails a check, is not attached and shows as
`"state": "failed"` in mounts.json. Each test swaps the decoy in at the source path between a
clean stop and the next start, then proves the decoy is nowhere in the view.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.escape import (
    SECRET_NAME,
    Trees,
    decoy_snapshot,
    mounted,
    put_decoy_in_place,
    snapshot,
)


def _restart_during(view: ViewHandle, trees: Trees, attack: AbstractContextManager[None]) -> None:
    """Attach the source, stop the daemon, and start it again inside the attack: the subtree
    must come back failed, with a reason, and nothing of the decoy may show."""
    view.ok(f"attach data {trees.source}")
    view.daemon.stop()
    with attack:
        assert SECRET_NAME in os.listdir(trees.source), "the attack did not take effect"
        view.start_again()
        records = {str(r["name"]): r for r in view.mounts_json()}
        assert set(records) == {"data"}
        assert records["data"]["state"] == "failed", records["data"]
        assert records["data"]["reason"], "a failed subtree must say why"
        assert os.listdir(view.path) == [".fusemount"]
        assert not os.path.lexists(view.path / "data" / SECRET_NAME)


@contextlib.contextmanager
def _decoy_put_in_place(trees: Trees, how: Callable[[Path, Path], None]) -> Iterator[None]:
    put_decoy_in_place(trees, how)
    yield


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_replaced_by_symlink_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    _restart_during(view, trees, _decoy_put_in_place(trees, os.symlink))
    trees.decoy_unchanged()


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_replaced_by_another_directory_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    _restart_during(view, trees, _decoy_put_in_place(trees, os.rename))
    assert snapshot(trees.source) == decoy_snapshot(), "the decoy was changed"


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_overmounted_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    _restart_during(view, trees, mounted(["--bind", str(trees.decoy)], trees.source))
    trees.decoy_unchanged()
