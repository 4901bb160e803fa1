"""Idle expiry (autofs-style): `expire=SECONDS` detaches a subtree idle that long."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.control import audit_config, audit_records
from tests.support.daemon import ViewFactory, wait_until


def _names(view: Path) -> list[str]:
    return sorted(os.listdir(view))


@pytest.mark.timeout(60)
def test_idle_subtree_with_expire_detaches_and_audit_says_so(
    view_factory: ViewFactory, source: Path, scratch: Path
) -> None:
    audit = scratch / "audit.log"
    view = view_factory(audit_config(audit))
    (source / "f").write_text("x")
    view.ok(f"attach idle {source} expire=1.5 holder=vm1")
    assert "idle" in _names(view.path)
    assert wait_until(lambda: "idle" not in _names(view.path), 15, 0.2)
    assert view.mounts_json() == []
    expired = [r for r in audit_records(audit) if r["command"] == "expire idle"]
    assert expired
    changes = expired[0]["changes"]
    assert isinstance(changes, dict) and changes["holders_released"] == ["vm1"]


@pytest.mark.timeout(60)
def test_open_file_keeps_expiring_subtree_attached(
    view_factory: ViewFactory, source: Path
) -> None:
    view = view_factory()
    (source / "f").write_text("x")
    view.ok(f"attach busy {source} expire=1")
    with open(view.path / "busy" / "f") as held:
        time.sleep(3)
        assert "busy" in _names(view.path)
        assert held.read() == "x"
    assert wait_until(lambda: "busy" not in _names(view.path), 15, 0.2)


@pytest.mark.timeout(60)
def test_subtree_without_expire_stays(view_factory: ViewFactory, source: Path) -> None:
    view = view_factory()
    view.ok(f"attach stays {source}")
    time.sleep(2.5)
    assert "stays" in _names(view.path)
