"""[performance] spin_us: after a reply the daemon waits awake for the next request, but only
while that pays (the binding's adaptive spin, README "The binding").

A view used now and then must not burn a CPU: once spins find nothing, the daemon sleeps in
epoll again until requests come close together.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User plus system time of the whole daemon (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


@pytest.mark.timeout(60)
def test_sparse_requests_do_not_keep_the_daemon_spinning(
    view_factory: ViewFactory, source: Path
) -> None:
    # The longest spin allowed, and no attribute caching: each fstat is one GETATTR.
    view = view_factory("[performance]\nspin_us = 1000\n[cache]\nattr_timeout = 0\n")
    (source / "f").write_text("x")
    view.ok(f"attach s {source}")
    fd = os.open(view.path / "s" / "f", os.O_RDONLY)
    try:
        for _ in range(50):  # close together: spins pay, so the daemon spins
            os.fstat(fd)
        before, start = _cpu_s(view.pid), time.monotonic()
        for _ in range(300):  # one request every 4 ms: a spin never finds the next one
            os.fstat(fd)
            time.sleep(0.004)
        busy = (_cpu_s(view.pid) - before) / (time.monotonic() - start)
    finally:
        os.close(fd)
    # Spinning 1 ms after each reply would take a quarter of a CPU; a few spins at the start
    # and 300 GETATTRs take a few percent.
    assert busy < 0.12, f"daemon used {busy:.0%} of a CPU for one request per 4 ms"
