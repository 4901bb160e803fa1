"""The audit log (SPEC 4, 8; config log.audit): one JSON object per control command, accepted
or refused, with time, uid, gid, pid, command and result, in a file of mode 0600.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import stat
from pathlib import Path

import pytest

from tests.support.control import audit_config, audit_records
from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.users import Users, py_as

_FIELDS = {"time", "uid", "gid", "pid", "command", "result"}


@pytest.fixture
def audit(scratch: Path) -> Path:
    """Where the test's view writes its audit log."""
    return scratch / "audit.log"


@pytest.fixture
def view(view_factory: ViewFactory, audit: Path) -> ViewHandle:
    """A live view on defaults that writes its audit log to `audit`."""
    return view_factory(audit_config(audit))


@pytest.mark.timeout(60)
def test_audit_log_has_one_line_per_command_accepted_or_refused(
    view: ViewHandle, audit: Path, source: Path, users: Users
) -> None:
    commands: list[tuple[str | bytes, str]] = [
        (f"attach data {source}", "ok"),
        ("hold data H1", "ok"),
        ("detach nosuch", "ENOENT"),
        ("frobnicate", "EINVAL"),
        (b"detach \xff", "EINVAL"),
        ("x" * 5000, "E2BIG"),
        ("release data H1", "ok"),
    ]
    for command, expected in commands:
        reply = view.ctl(command)
        assert (reply.errno_name or "ok") == expected, reply.describe(command)
    as_alice = ctl_as(users.alice, view.path, "detach data")
    assert as_alice.errno_name == "EACCES"
    records = audit_records(audit)
    assert len(records) == len(commands) + 1, records
    for record, (command, expected) in zip(records, commands, strict=False):
        assert set(record) >= _FIELDS, record
        assert record["result"] == expected, record
        assert (record["uid"], record["gid"], record["pid"]) == (0, 0, os.getpid()), record
        if isinstance(command, str) and len(command) < 200:
            assert record["command"] == command, record
        assert isinstance(record["time"], str)
        stamp = datetime.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 600
    last = records[-1]
    assert (last["uid"], last["gid"]) == (users.alice.uid, users.alice.gid), last
    assert last["result"] == "EACCES" and last["command"] == "detach data"
    assert isinstance(last["pid"], int) and last["pid"] not in (0, os.getpid())


@pytest.mark.timeout(60)
def test_audit_log_file_is_mode_0600(
    view: ViewHandle, audit: Path, source: Path
) -> None:
    view.ok(f"attach data {source}")
    mode = os.stat(audit).st_mode
    assert stat.S_ISREG(mode)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.timeout(60)
def test_audit_log_is_appended_across_restarts(
    view: ViewHandle, audit: Path, source: Path
) -> None:
    view.ok(f"attach data {source}")
    view.restart()
    view.ok("detach data")
    assert [r["command"] for r in audit_records(audit)] == [f"attach data {source}", "detach data"]


@pytest.mark.timeout(60)
def test_audit_record_of_multi_line_write_stays_one_line(
    view: ViewHandle, audit: Path
) -> None:
    assert view.ctl("detach a\ndetach b\n").errno_name == "EINVAL"
    assert view.ctl('detach "\u2028"').errno_name == "EINVAL"
    records = audit_records(audit)
    assert len(records) == 2
    assert all(r["result"] == "EINVAL" for r in records)


# Bound for one user's flood (SPEC 6): REFUSALS_PER_WINDOW records of at most 512 bytes each,
# plus one summary record, per uid and minute.
FLOOD_BOUND_BYTES = 8192


@pytest.mark.timeout(120)
def test_refusal_flood_of_1mib_commands_keeps_the_audit_log_small_issue_12(
    view: ViewHandle, audit: Path, users: Users
) -> None:
    ctl_path = view.path / ".fusemount" / "ctl"
    codes = py_as(users.alice, f"""
import errno, os
codes = []
for _ in range(200):
    fd = os.open({str(ctl_path)!r}, os.O_WRONLY)
    try:
        os.write(fd, b"attach x /" + b"a" * (1 << 20))
        codes.append(0)
    except OSError as exc:
        codes.append(exc.errno)
    finally:
        os.close(fd)
print(json.dumps(sorted(set(codes))))
""", timeout_s=100)
    assert codes == [errno.E2BIG]
    metrics = (view.path / ".fusemount" / "metrics").read_text()
    assert re.search(r"^fusemount_audit_records_suppressed (\d+)", metrics, re.M)
    assert "fusemount_audit_records_suppressed 0" not in metrics
    assert view.daemon.stop() == 0  # closing the log writes the pending summary
    size = audit.stat().st_size
    assert size <= FLOOD_BOUND_BYTES, size
    records = audit_records(audit)
    assert all(len(line) < 512 for line in audit.read_bytes().splitlines())
    refused = [r for r in records if r["result"] == "E2BIG"]
    assert refused and all(r["uid"] == users.alice.uid for r in refused)
    (summary,) = [r for r in records if r["result"] == "suppressed"]
    assert summary["message"] == (
        f"{200 - len(refused)} similar refusals from uid {users.alice.uid} suppressed")
    assert len(view.daemon.stderr_text()) < FLOOD_BOUND_BYTES
