"""Crash recovery (SPEC 2 and 8): after kill -9 the dead FUSE mount is cleaned up by the next
`serve` on the same view, and the table comes back with every acknowledged change in it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.control import names_listed, record_of, state_table, unexpected_log_lines
from tests.support.daemon import VIEW_FSTYPE, ViewHandle, is_mounted, mountinfo, reap, wait_until
from tests.support.dirs import SourceFactory

_EXPECTED_WARNINGS = ("dead FUSE mount", "not connected")
ROUNDS = 20
NAMES = 6

# Runs as a separate process: attaches and detaches at random, as fast as it can, and logs
# "start VERB NAME" before each write and "ok VERB NAME" after each ok reply, until a write
# fails (the daemon was killed under it). Each log line is one O_APPEND write.
_BURST = r"""
import errno, json, os, random, sys
view, log_path, seed, sources = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
ctl = os.path.join(view, ".fusemount", "ctl")
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
rng = random.Random(seed)
with open(os.path.join(view, ".fusemount", "mounts.json"), "rb") as f:
    present = {r["name"] for r in json.loads(f.read())}
while True:
    name = rng.choice(sorted(sources))
    verb = "detach" if name in present else "attach"
    command = f"detach {name}" if verb == "detach" else f"attach {name} {sources[name]}"
    os.write(log, f"start {verb} {name}\n".encode())
    try:
        fd = os.open(ctl, os.O_RDWR)
        try:
            os.write(fd, command.encode())
            reply = os.read(fd, 65536)
        finally:
            os.close(fd)
    except OSError as exc:
        os.write(log, f"fail {verb} {name} {errno.errorcode.get(exc.errno, exc.errno)}\n".encode())
        sys.exit(0)
    if not json.loads(reply).get("ok"):
        os.write(log, f"refused {verb} {name} {reply!r}\n".encode())
        sys.exit(1)
    os.write(log, f"ok {verb} {name}\n".encode())
    present.symmetric_difference_update({name})
"""


def _expected(log_text: str, before: set[str]) -> tuple[set[str], str | None]:
    """From a burst log: the names that must be present, and the one name (if any) whose
    last command was sent but never acknowledged, so that either outcome is right."""
    present = set(before)
    in_flight: str | None = None
    for line in log_text.splitlines():
        word, verb, name = line.split()[:3]
        if word == "start":
            in_flight = name
        elif word == "ok":
            if verb == "attach":
                present.add(name)
            else:
                present.discard(name)
            in_flight = None
        elif word == "refused":
            raise AssertionError(f"burst got a refusal it did not expect: {line}")
    return present, in_flight


def _assert_table(actual: set[str], present: set[str], in_flight: str | None, what: str) -> None:
    loose = {in_flight} if in_flight else set()
    assert actual - loose == present - loose, (
        f"{what}: table {sorted(actual)} but acknowledged commands imply {sorted(present)}"
        f" (in flight: {in_flight})"
    )


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok
def test_kill_9_then_serve_cleans_dead_mount_and_restores_table(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    a, b = new_source(), new_source()
    (a / "f").write_text("a")
    view.ok(f"attach a {a} holder=H1")
    view.ok(f"attach b {b} ro")
    before = view.mounts_json()
    # A file left open in the dead view must not keep the next daemon from cleaning it up.
    orphan = os.open(view.path / "a" / "f", os.O_RDONLY)
    try:
        view.daemon.kill()
        with pytest.raises(OSError) as dead:
            # listdir, not stat: the root's attributes may be answered from the kernel's cache
            # for cache.attr_timeout; a listing always needs the (dead) daemon.
            os.listdir(view.path)
        assert dead.value.errno == errno.ENOTCONN
        view.start_again()
    finally:
        with contextlib.suppress(OSError):
            os.close(orphan)
    assert is_mounted(view.path, VIEW_FSTYPE)
    assert _mount_entries(view.path) == [VIEW_FSTYPE], "stacked or stale mounts"
    after = view.mounts_json()
    keys = ("name", "source", "holders", "ro", "state", "dev", "ino")
    assert [{k: r[k] for k in keys} for r in after] == [{k: r[k] for k in keys} for r in before]
    assert (view.path / "a" / "f").read_text() == "a"
    assert record_of(after, "a")["holders"] == ["H1"]
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


def _mount_entries(path: Path) -> list[str]:
    return [e.fstype for e in mountinfo() if e.mount_point == path]


@pytest.mark.timeout(150)
@pytest.mark.daemon_log_ok
def test_kill_9_during_command_burst_loses_no_acknowledged_change(
    view: ViewHandle, new_source: SourceFactory, scratch: Path
) -> None:
    rng = random.Random(20240607)
    sources = {f"n{i}": str(new_source()) for i in range(NAMES)}
    for round_no in range(ROUNDS):
        before = names_listed(view.path)
        log_text = _burst_interrupted_by(
            view, scratch / f"burst-{round_no}.log", sources, rng, 0.15, view.daemon.kill,
            f"round {round_no}")
        present, in_flight = _expected(log_text, before)
        assert "ok " in log_text, f"round {round_no}: no command acknowledged before the kill"
        on_disk = set(state_table(view.state))  # must parse after any crash
        _assert_table(on_disk, present, in_flight, f"round {round_no}: state file")
        view.start_again()
        records = view.mounts_json()
        assert {r["name"] for r in records} == on_disk, f"round {round_no}: restore lost entries"
        assert all(r["state"] == "attached" for r in records), records
        _assert_table(names_listed(view.path), present, in_flight, f"round {round_no}: view")
    assert unexpected_log_lines(view.daemon, _EXPECTED_WARNINGS) == []


def _burst_interrupted_by(view: ViewHandle, log_path: Path, sources: dict[str, str],
                          rng: random.Random, max_delay_s: float, interrupt: Callable[[], None],
                          what: str) -> str:
    """Run a command burst against the view, interrupt the daemon soon after the first
    acknowledged command, and return the burst's log of what was acknowledged."""
    burst = subprocess.Popen(
        [sys.executable, "-c", _BURST, str(view.path), str(log_path),
         str(rng.randrange(1 << 30)), json.dumps(sources)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: "ok " in _read(log_path), 10, 0.005)
        time.sleep(rng.uniform(0.0, max_delay_s))
        interrupt()
        _, err = burst.communicate(timeout=20)
    finally:
        reap(burst)
    assert burst.returncode == 0, f"{what}: burst failed: {err.decode()}"
    return _read(log_path)


def _stop_exits_0(view: ViewHandle) -> Callable[[], None]:
    def stop() -> None:
        assert view.daemon.stop() == 0, "SIGTERM during a burst: exit code not 0"
    return stop


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.mark.timeout(90)
def test_sigterm_during_command_burst_exits_0_and_keeps_acknowledged_changes(
    view: ViewHandle, new_source: SourceFactory, scratch: Path
) -> None:
    rng = random.Random(77)
    sources = {f"n{i}": str(new_source()) for i in range(NAMES)}
    for round_no in range(3):
        before = names_listed(view.path)
        log_text = _burst_interrupted_by(
            view, scratch / f"term-{round_no}.log", sources, rng, 0.1, _stop_exits_0(view),
            f"round {round_no}")
        assert not is_mounted(view.path)
        present, in_flight = _expected(log_text, before)
        on_disk = set(state_table(view.state))
        _assert_table(on_disk, present, in_flight, f"round {round_no}: state file")
        view.start_again()
        _assert_table(names_listed(view.path), present, in_flight, f"round {round_no}: view")
