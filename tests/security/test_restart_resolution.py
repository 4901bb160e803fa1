"""Attacks on the source path while the daemon is down: restart must not attach the decoy.

SPEC 8: `serve` re-attaches every subtree from the state file running every check again; a
source whose identity (dev, ino) changed, or that fails a check, is not attached and shows as
`"state": "failed"` in mounts.json. Each test swaps the decoy in at the source path between a
clean stop and the next start, then proves the decoy is nowhere in the view.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.support.daemon import ViewHandle
from tests.support.escape import SECRET_NAME, Trees, decoy_snapshot, mounted, snapshot


def _restart_after(view: ViewHandle, trees: Trees, attack: Callable[[], None]) -> None:
    view.ok(f"attach data {trees.source}")
    view.daemon.stop()
    attack()
    assert SECRET_NAME in os.listdir(trees.source), "the attack did not take effect"
    view.daemon.start(view.path, view.daemon.config_text, view.state)
    records = {str(r["name"]): r for r in view.mounts_json()}
    assert set(records) == {"data"}
    assert records["data"]["state"] == "failed", records["data"]
    assert records["data"]["reason"], "a failed subtree must say why"
    assert os.listdir(view.path) == [".fusemount"]
    assert not os.path.lexists(view.path / "data" / SECRET_NAME)


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_replaced_by_symlink_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    def attack() -> None:
        os.rename(trees.source, trees.source.with_name(trees.source.name + ".moved"))
        os.symlink(trees.decoy, trees.source)

    _restart_after(view, trees, attack)
    trees.decoy_unchanged()


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_replaced_by_another_directory_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    def attack() -> None:
        os.rename(trees.source, trees.source.with_name(trees.source.name + ".moved"))
        os.rename(trees.decoy, trees.source)

    _restart_after(view, trees, attack)
    assert snapshot(trees.source) == decoy_snapshot(), "the decoy was changed"


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the restart warns that `data` could not be re-attached
def test_source_overmounted_while_daemon_down_is_not_reattached(
    view: ViewHandle, trees: Trees
) -> None:
    view.ok(f"attach data {trees.source}")
    view.daemon.stop()
    with mounted(["--bind", str(trees.decoy)], trees.source):
        assert SECRET_NAME in os.listdir(trees.source), "the attack did not take effect"
        view.daemon.start(view.path, view.daemon.config_text, view.state)
        records = {str(r["name"]): r for r in view.mounts_json()}
        assert records["data"]["state"] == "failed", records["data"]
        assert os.listdir(view.path) == [".fusemount"]
        trees.decoy_unchanged()
