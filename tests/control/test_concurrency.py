"""Concurrent control commands (SPEC 4, 6): eight processes attach, detach, hold and release at
random against a small max_subtrees. Afterwards the table must be exactly what the commands
that got an ok reply imply: no duplicates, never above the cap, holders as acknowledged.

The audit log gives the order in which the daemon carried the commands out; replaying it
through a model of SPEC 4 must predict every reply each process got, and the final table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.control import DOCUMENTED_ERRNOS, audit_config, audit_records, state_table
from tests.support.daemon import ViewFactory, reap
from tests.support.dirs import SourceFactory

WORKERS = 8
DURATION_S = 3.0
MAX_SUBTREES = 3
NAMES = 5
HOLDERS_PER_WORKER = 2

# One worker: random commands until the deadline; prints [[command, result, reply], ...].
_WORKER = r"""
import errno, json, os, random, sys, time
view, seed, duration, sources, other, me, holders = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5],
    sys.argv[6], int(sys.argv[7]))
ctl = os.path.join(view, ".fusemount", "ctl")
rng = random.Random(seed)
names = sorted(sources)
out = []
deadline = time.monotonic() + duration
while time.monotonic() < deadline:
    name = rng.choice(names)
    holder = f"{me}-h{rng.randrange(holders)}"
    roll = rng.random()
    if roll < 0.30:
        command = f"attach {name} {sources[name]}"
        if rng.random() < 0.6:
            command += f" holder={holder}"
    elif roll < 0.35:
        command = f"attach {name} {other} holder={holder}"
    elif roll < 0.50:
        command = f"detach {name}"
    elif roll < 0.75:
        command = f"hold {name} {holder}"
    else:
        command = f"release {name} {holder}"
    fd = os.open(ctl, os.O_RDWR)
    try:
        try:
            os.write(fd, command.encode())
            result = "ok"
        except OSError as exc:
            result = errno.errorcode.get(exc.errno, str(exc.errno))
        reply = os.read(fd, 65536).decode()
    finally:
        os.close(fd)
    out.append([command, result, reply])
print(json.dumps(out))
"""


@dataclass
class _Subtree:
    source: str
    holders: list[str] = field(default_factory=list)
    created_with_holder: bool = False


class _Model:
    """SPEC 4 and 6 for attach/detach/hold/release, one command at a time."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.table: dict[str, _Subtree] = {}

    def apply(self, command: str) -> str:
        """Carry out command; return the result the SPEC calls for ("ok" or an errno)."""
        verb, name, *rest = command.split()
        found = self.table.get(name)
        if verb == "attach":
            source = rest[0]
            holder = rest[1].removeprefix("holder=") if len(rest) > 1 else None
            if found is None:
                if len(self.table) >= self.cap:
                    return "ENOSPC"
                self.table[name] = _Subtree(source, [holder] if holder else [], bool(holder))
                return "ok"
            if found.source != source:
                return "EEXIST"
            if holder and holder not in found.holders:
                found.holders.append(holder)
            return "ok"
        if found is None:
            return "ENOENT"
        if verb == "detach":
            del self.table[name]
            return "ok"
        holder = rest[0]
        if verb == "hold":
            if holder not in found.holders:
                found.holders.append(holder)
            return "ok"
        assert verb == "release", command
        if holder not in found.holders:
            return "ENOENT"
        found.holders.remove(holder)
        if not found.holders and found.created_with_holder:
            del self.table[name]
        return "ok"


def _holder_table(records: list[dict[str, object]]) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for record in records:
        holders = record["holders"]
        assert isinstance(holders, list), record
        table[str(record["name"])] = sorted(str(h) for h in holders)
    return table


def _holder_implied_by_own_replies(log: list[list[str]], name: str, holder: str) -> bool:
    """Did this worker's last acknowledged command about (name, holder) add the holder?"""
    last = False
    for command, result, _ in log:
        if result != "ok":
            continue
        words = command.split()
        if words[1] != name:
            continue
        added = (words[0] == "attach" and f"holder={holder}" in words[2:]) or (
            words[0] == "hold" and words[2] == holder
        )
        if added:
            last = True
        elif words[0] == "release" and words[2] == holder:
            last = False
    return last


@pytest.mark.timeout(90)
def test_concurrent_commands_leave_a_consistent_table(
    view_factory: ViewFactory, new_source: SourceFactory, scratch: Path
) -> None:
    audit = scratch / "audit.log"
    view = view_factory(f"[limits]\nmax_subtrees = {MAX_SUBTREES}\n" + audit_config(audit))
    sources = {f"n{i}": str(new_source()) for i in range(NAMES)}
    other = str(new_source())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(view.path),
                str(1000 + w),
                str(DURATION_S),
                json.dumps(sources),
                other,
                f"w{w}",
                str(HOLDERS_PER_WORKER),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(WORKERS)
    ]
    logs: list[list[list[str]]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            logs.append(json.loads(out))
    finally:
        for proc in procs:
            reap(proc)

    # Every reply is a documented errno, and the JSON reply agrees with the write.
    for log in logs:
        assert len(log) > 10, "a worker barely ran"
        for command, result, reply in log:
            data = json.loads(reply)
            assert data["ok"] is (result == "ok"), (command, result, reply)
            if result != "ok":
                assert result in DOCUMENTED_ERRNOS, (command, result, reply)
                assert data["errno"] == result, (command, result, reply)

    # The run exercised the cap and the name clash, not just the easy paths.
    results = Counter(r for log in logs for _, r, _ in log)
    assert results["ENOSPC"] > 0 and results["EEXIST"] > 0 and results["ok"] > 0, results

    # The audit log lists exactly the commands the workers sent, with the same results.
    records = audit_records(audit)
    sent = Counter((c, r) for log in logs for c, r, _ in log)
    audited = Counter((str(rec["command"]), str(rec["result"])) for rec in records)
    assert audited == sent

    # Replayed in the daemon's order, SPEC 4 predicts every result.
    model = _Model(MAX_SUBTREES)
    for rec in records:
        command, result = str(rec["command"]), str(rec["result"])
        predicted = model.apply(command)
        assert predicted == result, f"{command!r}: daemon said {result}, SPEC says {predicted}"
        assert len(model.table) <= MAX_SUBTREES

    expected = {name: sorted(s.holders) for name, s in model.table.items()}
    records_now = view.mounts_json()
    names_now = [str(r["name"]) for r in records_now]
    assert len(names_now) == len(set(names_now)), f"duplicate names: {names_now}"
    assert len(names_now) <= MAX_SUBTREES
    actual = _holder_table(records_now)
    assert actual == expected
    for name, subtree in model.table.items():
        assert next(r for r in records_now if r["name"] == name)["source"] == subtree.source

    # Each holder still present was last acknowledged as added by the worker that owns it.
    for name, holders in actual.items():
        for holder in holders:
            owner = int(holder.split("-")[0].removeprefix("w"))
            assert _holder_implied_by_own_replies(logs[owner], name, holder), (name, holder)

    # What is on disk is the same table, and survives a restart.
    assert {n: sorted(h) for n, h in state_table(view.state).items()} == expected
    view.restart()
    assert _holder_table(view.mounts_json()) == expected
