"""busy_poll: the CPU latency request is held only while requests flow, and withdrawn."""

from __future__ import annotations

import struct
from pathlib import Path

from fusemount.host.cpulatency import CpuLatencyRequest
from fusemount.view.busypoll import ENGAGE_RATE, RELEASE_AFTER_S, TICK_S, BusyPoll
from tests.support.procfs import fd_targets


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_request_writes_zero_and_holds_descriptor_until_release(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    request = CpuLatencyRequest(str(device))
    assert request.hold() and request.held
    assert request.hold()  # idempotent: no second descriptor
    assert struct.unpack("=i", device.read_bytes()) == (0,)
    assert str(device) in fd_targets()
    request.release()
    request.release()
    assert not request.held
    assert str(device) not in fd_targets()


def test_missing_device_makes_request_unavailable(tmp_path: Path) -> None:
    request = CpuLatencyRequest(str(tmp_path / "absent"))
    assert not request.hold()
    assert not request.available and not request.held


def test_busy_poll_engages_at_rate_and_releases_after_quiet(tmp_path: Path) -> None:
    device = tmp_path / "dev"
    device.write_bytes(b"")
    request = CpuLatencyRequest(str(device))
    counter = _Counter()
    poll = BusyPoll(request, counter)

    counter.value += int(ENGAGE_RATE * TICK_S) - 1  # just below the rate: stays off
    poll.tick(TICK_S)
    assert not request.held
    counter.value += int(ENGAGE_RATE * TICK_S)
    poll.tick(TICK_S)
    assert request.held

    quiet_ticks = round(RELEASE_AFTER_S / TICK_S)
    for _ in range(quiet_ticks - 1):
        poll.tick(TICK_S)
        assert request.held, "released before RELEASE_AFTER_S of quiet"
    counter.value += int(ENGAGE_RATE * TICK_S)  # busy again: the quiet time starts over
    poll.tick(TICK_S)
    for _ in range(quiet_ticks - 1):
        poll.tick(TICK_S)
    assert request.held
    poll.tick(TICK_S)
    assert not request.held
