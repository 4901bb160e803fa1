"""Hold a CPU latency request only while requests are flowing ([performance] busy_poll).

Polling idle CPUs costs power (and host CPU in a VM), so the request is held only while
the view answers at least ENGAGE_RATE requests a second, measured over TICK_S, and is
withdrawn after RELEASE_AFTER_S below that rate. An idle view never holds it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from fusemount.host.cpulatency import CpuLatencyRequest

TICK_S = 0.2
ENGAGE_RATE = 1000.0  # requests per second
RELEASE_AFTER_S = 1.0


class BusyPoll:
    def __init__(self, request: CpuLatencyRequest, count: Callable[[], int]) -> None:
        self.request = request
        self.count = count
        self._last = count()
        self._quiet_s = 0.0

    def tick(self, elapsed_s: float) -> None:
        """One measurement over the last elapsed_s seconds."""
        now = self.count()
        busy = (now - self._last) >= ENGAGE_RATE * elapsed_s
        self._last = now
        if busy:
            self._quiet_s = 0.0
            self.request.hold()
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
