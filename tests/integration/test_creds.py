"""creds.as_caller: per-thread fs credentials and the CAP_SYS_RESOURCE drop (SPEC 6).

The CI machine may run without CAP_SYS_RESOURCE (then there is nothing to drop), so the
mechanism is checked with another capability standing in for it: inside the switch that
capability and the filesystem ones are gone from the thread's effective set, and afterwards
the set is exactly what it was.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from fusemount.core.records import Caller
from fusemount.host import creds, syscalls

pytestmark = pytest.mark.needs_root

CAP_DAC_OVERRIDE = 1
CAP_SYS_NICE = 23
T = TypeVar("T")


def _in_thread(fn: Callable[[], T]) -> T:
    """fn() in a fresh thread: credentials and capabilities are per thread."""
    out: list[T] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join(10)
    return out[0]


def _thread_cap_eff() -> int:
    with open("/proc/thread-self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def test_capget_matches_proc_and_capset_round_trips() -> None:
    def probe() -> tuple[int, int, int]:
        caps = syscalls.capget()
        before = _thread_cap_eff()
        syscalls.capset(syscalls.CapSets(caps.effective & ~(1 << CAP_SYS_NICE), caps.permitted,
                                         caps.inheritable))
        dropped = _thread_cap_eff()
        syscalls.capset(caps)
        return before, dropped, _thread_cap_eff()

    base = syscalls.capget().effective
    before, dropped, after = _in_thread(probe)
    assert before == base == after
    assert dropped == base & ~(1 << CAP_SYS_NICE)
    assert _thread_cap_eff() == base, "another thread's capset changed this thread"


def test_as_caller_drops_the_spending_capability_and_restores_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = syscalls.capget()
    stand_in = syscalls.CapSets(base.effective & ~(1 << CAP_SYS_NICE), base.permitted,
                                base.inheritable)
    monkeypatch.setattr(creds, "_BASE_CAPS", base)
    monkeypatch.setattr(creds, "_SPENDING", stand_in)

    def probe() -> tuple[int, int, int]:
        with creds.as_caller(Caller(4242, 4242, os.getpid())):
            inside = _thread_cap_eff()
            fsuid = syscalls.setfsuid(-1)
        return inside, fsuid, _thread_cap_eff()

    inside, fsuid, after = _in_thread(probe)
    assert fsuid == 4242
    assert not inside & (1 << CAP_SYS_NICE)
    assert not inside & (1 << CAP_DAC_OVERRIDE), "capset put the fs capabilities back"
    assert after == base.effective


def test_as_root_keeps_every_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    base = syscalls.capget()
    monkeypatch.setattr(creds, "_SPENDING", syscalls.CapSets(
        base.effective & ~(1 << CAP_SYS_NICE), base.permitted, base.inheritable))

    def probe() -> int:
        with creds.as_caller(Caller(0, 5, os.getpid())):
            return _thread_cap_eff()

    assert _in_thread(probe) == base.effective
