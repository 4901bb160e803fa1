"""busy_poll: the CPU latency request is held only while requests flow, and withdrawn."""

from __future__ import annotations

import struct
from pathlib import Path

from fusemount.daemon.busypoll import (
    ENGAGE_COUNT,
    ENGAGE_RATE,
    RELEASE_AFTER_S,
    TICK_S,
    BusyPoll,
)
from fusemount.host.cpulatency import CpuLatencyRequest
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


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _poll(tmp_path: Path) -> tuple[BusyPoll, CpuLatencyRequest, _Counter, _Clock]:
    device = tmp_path / "dev"
    device.write_bytes(b"")
    request = CpuLatencyRequest(str(device))
    counter, clock = _Counter(), _Clock()
    return BusyPoll(request, counter, clock), request, counter, clock


def test_burst_engages_only_at_rate(tmp_path: Path) -> None:
    poll, request, _, clock = _poll(tmp_path)
    window = ENGAGE_COUNT / ENGAGE_RATE
    clock.now += window * 1.5  # ENGAGE_COUNT requests, too slowly
    poll.on_burst()
    assert not request.held
    clock.now += window * 0.9  # the next ENGAGE_COUNT, fast enough
    poll.on_burst()
    assert request.held


def test_release_after_quiet_and_busy_ticks_restart_the_wait(tmp_path: Path) -> None:
    poll, request, counter, clock = _poll(tmp_path)
    poll.on_burst()  # at once: engaged
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
    clock.now += 10.0
    poll.on_burst()  # a slow trickle after a long pause does not engage
    assert not request.held


def test_answered_requests_drive_the_burst_and_the_count(tmp_path: Path) -> None:
    """The daemon's request observer calls answered() (issue 16 item 4: no module global)."""
    device = tmp_path / "dev"
    device.write_bytes(b"")
    request = CpuLatencyRequest(str(device))
    clock = _Clock()
    poll = BusyPoll(request, clock=clock)
    clock.now += ENGAGE_COUNT / ENGAGE_RATE * 1.5  # too slow: the first burst only measures
    for _ in range(ENGAGE_COUNT):
        poll.answered()
    assert not request.held
    for _ in range(ENGAGE_COUNT - 1):
        poll.answered()
    assert not request.held  # not a whole burst yet
    poll.answered()
    assert request.held and poll.count() == 2 * ENGAGE_COUNT
    request.release()
