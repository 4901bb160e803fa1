"""[performance] busy_poll: the daemon holds /dev/cpu_dma_latency only while it is busy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fusemount.host.cpulatency import DEVICE
from tests.support.daemon import ViewFactory, ViewHandle, wait_until
from tests.support.procfs import fd_targets

pytestmark = pytest.mark.skipif(not os.path.exists(DEVICE), reason=f"no {DEVICE}")


def _holds_device(pid: int) -> bool:
    return DEVICE in fd_targets(pid)


def _gauge(view: ViewHandle) -> float:
    for line in (view.path / ".fusemount" / "metrics").read_text().splitlines():
        if line.startswith("fusemount_busy_poll "):
            return float(line.split()[1])
    raise AssertionError("no fusemount_busy_poll gauge")


def _stat_burst(path: Path, seconds: float, pid: int) -> bool:
    """stat path in a loop for seconds; whether the daemon was seen holding the device."""
    seen = False
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(200):
            os.stat(path)
        seen = seen or _holds_device(pid)
    return seen


@pytest.mark.timeout(60)
def test_busy_view_holds_latency_request_then_withdraws_it(
    view_factory: ViewFactory, source: Path
) -> None:
    # Opt-in since issue 13; no caching, so every stat of the burst is a request.
    view = view_factory("[performance]\nbusy_poll = true\n"
                        "[cache]\nentry_timeout = 0\nattr_timeout = 0\n")
    (source / "f").write_text("x")
    view.ok(f"attach s {source}")
    pid = view.pid
    time.sleep(1.5)  # the attach and the fixture's probes are long over
    assert not _holds_device(pid), "an idle view must not hold the request"
    assert _stat_burst(view.path / "s" / "f", 2.0, pid)
    assert wait_until(lambda: not _holds_device(pid), 10, 0.2), (
        "still held after the view went quiet")
    assert _gauge(view) == 0.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("config", ["[performance]\nbusy_poll = false\n", ""],
                         ids=["false", "default"])
def test_busy_poll_false_never_holds_it(view_factory: ViewFactory, source: Path,
                                        config: str) -> None:
    view = view_factory(config)
    (source / "f").write_text("x")
    view.ok(f"attach s {source}")
    pid = view.pid
    assert not _stat_burst(view.path / "s" / "f", 2.0, pid)
    assert _gauge(view) == 0.0
