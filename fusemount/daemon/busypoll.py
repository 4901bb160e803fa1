"""Hold a CPU latency request only while requests are flowing ([performance] busy_poll).

Polling idle CPUs costs power (and host CPU in a VM), so the request is held only while
the view answers at least ENGAGE_RATE requests a second and is withdrawn after
RELEASE_AFTER_S below that rate. An idle view never holds it.

Engaging is driven by the requests themselves, so that a short burst (an `ls -l` of a few
hundred files takes tens of milliseconds) benefits: the daemon's request observer calls
answered() for each request, and every ENGAGE_COUNT of them on_burst() engages if they
came fast enough. Releasing is
driven by a timer, since a quiet view has no requests to drive anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from fusemount.host.cpulatency import CpuLatencyRequest

ENGAGE_RATE = 1000.0  # requests per second
ENGAGE_COUNT = 50  # requests per rate check: a burst engages within 50 ms
TICK_S = 0.25
RELEASE_AFTER_S = 1.0


class BusyPoll:
    def __init__(self, request: CpuLatencyRequest, count: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """count: requests answered so far; by default those answered() was told of."""
        self.request = request
        self.answered_total = 0
        self.count = count or (lambda: self.answered_total)
        self.clock = clock
        self._window_start = clock()
        self._tick_count = self.count()
        self._quiet_s = 0.0

    def answered(self) -> None:
        """One more request answered."""
        self.answered_total += 1
        if not self.answered_total % ENGAGE_COUNT:
            self.on_burst()

    def on_burst(self) -> None:
        """ENGAGE_COUNT more requests were answered: hold if they came at ENGAGE_RATE."""
        now = self.clock()
        if now - self._window_start <= ENGAGE_COUNT / ENGAGE_RATE:
            self._quiet_s = 0.0
            self.request.hold()
        self._window_start = now

    def tick(self, elapsed_s: float) -> None:
        """Once per TICK_S: withdraw the request after RELEASE_AFTER_S below the rate."""
        now = self.count()
        busy = now - self._tick_count >= ENGAGE_RATE * elapsed_s
        self._tick_count = now
        if busy:
            self._quiet_s = 0.0
            return
        self._quiet_s += elapsed_s
        if self._quiet_s >= RELEASE_AFTER_S:
            self.request.release()

    async def run(self) -> None:
        try:
            while self.request.available:
                await trio.sleep(TICK_S)
                self.tick(TICK_S)
        finally:
            self.request.release()
