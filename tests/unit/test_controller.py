"""Controller against fakes of its two protocols (issue 16 item 1, control/publisher.py):
control reaches the view only through the Publisher, idle expiry saves in a worker under
the command lock, and declared-subtree reconciliation reads the user database in workers
(issue 16 item 3). No daemon, no FUSE."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from fusemount.control import declared
from fusemount.control.audit import AuditLog
from fusemount.control.commands import Controller
from fusemount.control.state import StateStore
from fusemount.core.policy import Admins, Rules
from fusemount.core.records import (
    Access,
    Caller,
    Config,
    Identity,
    Kind,
    Policy,
    SubtreeDecl,
    SubtreeId,
    SubtreeSpec,
)
from fusemount.core.subtrees import SubtreeTable
from fusemount.host import principals
from fusemount.host.sources import OpenedSource, ViewGuard

MAIN = threading.get_ident()


class FakeContext:
    def __init__(self) -> None:
        self.config = Config()
        self.rules = Rules(Admins(frozenset(), frozenset()), self.config.access)
        self.table = SubtreeTable(self.config.limits)
        self.view_guard: ViewGuard | None = None

    def access(self, caller: Caller, spec: SubtreeSpec) -> Access:
        return Access.RW

    def with_groups(self, caller: Caller) -> Caller:
        return caller


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def publish(self, sid: SubtreeId, spec: SubtreeSpec, opened: OpenedSource) -> None:
        self.calls.append(("publish", spec.name))

    def republish(self, spec: SubtreeSpec, *, drop_caches: bool) -> None:
        self.calls.append(("republish", spec.name))

    def unpublish(self, name: str) -> None:
        self.calls.append(("unpublish", name))

    def open_files(self, name: str) -> int:
        return 0

    def source(self, name: str) -> OpenedSource | None:
        return None

    async def flush(self) -> None:
        self.calls.append(("flush", ""))


class ThreadRecordingStore(StateStore):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.threads: list[int] = []

    def save(self, specs: Sequence[SubtreeSpec]) -> None:
        self.threads.append(threading.get_ident())
        super().save(specs)


def _spec(name: str) -> SubtreeSpec:
    return SubtreeSpec(name, Kind.ATTACH, "/nowhere", Identity(1, 2, 3, "ext4"),
                       Policy(owner=0), expire_s=5.0)


def _controller(tmp_path: Path) -> tuple[Controller, FakeContext, FakePublisher,
                                         ThreadRecordingStore]:
    ctx, view = FakeContext(), FakePublisher()
    store = ThreadRecordingStore(str(tmp_path / "state.json"))
    controller = Controller(ctx, view, store, AuditLog(str(tmp_path / "audit.log")))
    return controller, ctx, view, store


def test_expiry_saves_in_a_worker_and_unpublishes(tmp_path: Path) -> None:
    controller, ctx, view, store = _controller(tmp_path)
    ctx.table.add(_spec("idle"))
    trio.run(controller.expire, "idle")
    assert ctx.table.get("idle") is None
    assert store.threads and MAIN not in store.threads
    assert ("unpublish", "idle") in view.calls and ("flush", "") in view.calls


def test_expiry_waits_for_a_running_command_and_asks_again(tmp_path: Path) -> None:
    controller, ctx, _, store = _controller(tmp_path)
    ctx.table.add(_spec("busy"))
    still_idle = [True]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery, controller._lock:  # a command in flight
            nursery.start_soon(controller.expire, "busy", lambda: still_idle[0])
            await trio.sleep(0.05)
            assert ctx.table.get("busy") is not None  # not while the command runs
            still_idle[0] = False  # the command used the subtree

    trio.run(scenario)
    assert ctx.table.get("busy") is not None  # asked again under the lock: kept
    assert store.threads == []


def _record_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    threads: list[int] = []
    real = principals.uid_of

    def uid_of(word: str) -> int:
        threads.append(threading.get_ident())
        return real(word)

    monkeypatch.setattr(principals, "uid_of", uid_of)
    return threads


def test_reconcile_reads_users_in_workers(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _record_threads(monkeypatch)
    decl = SubtreeDecl(name="d", source="/nowhere", owner="root")
    spec = SubtreeSpec("d", Kind.ATTACH, "/nowhere", Identity(1, 2, 3, "ext4"),
                       Policy(owner=0), declared=True)
    assert trio.run(declared._up_to_date, spec, decl)
    controller, ctx, _, _ = _controller(tmp_path)
    trio.run(declared._record_failed, controller, decl, "no such source")
    assert ctx.table.get("d") is not None
    assert len(threads) >= 2 and MAIN not in threads
