"""The audit log (SPEC 8): one JSON object per line, mode 0600, never raises."""

from __future__ import annotations

import datetime
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from fusemount.control.audit import AuditLog
from fusemount.core.records import Access

FIELDS = {"time", "uid", "gid", "pid", "command", "result", "message", "changes"}


def _lines(path: Path) -> list[dict[str, object]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("ascii").splitlines()]


def _time(record: dict[str, object]) -> datetime.datetime:
    text = record["time"]
    assert isinstance(text, str)
    assert text.endswith("Z")
    parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.replace(tzinfo=datetime.UTC)


def test_audit_record_is_written_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    before = datetime.datetime.now(datetime.UTC)
    with AuditLog(str(path)) as audit:
        audit.record(
            uid=1000,
            gid=100,
            pid=4242,
            command="attach data /srv/data holder=vol-1",
            ok=True,
            message="attached",
            changes={"name": "data", "holders": ["vol-1"], "access": Access.RW},
        )
    (record,) = _lines(path)
    assert set(record) == FIELDS
    assert record["uid"] == 1000 and record["gid"] == 100 and record["pid"] == 4242
    assert record["command"] == "attach data /srv/data holder=vol-1"
    assert record["result"] == "ok"
    assert record["message"] == "attached"
    assert record["changes"] == {"name": "data", "holders": ["vol-1"], "access": 2}
    assert before <= _time(record) <= datetime.datetime.now(datetime.UTC)


def test_audit_failure_records_the_errno_name(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(str(path)) as audit:
        audit.record(
            uid=5,
            gid=5,
            pid=1,
            command="mount x tmpfs none",
            ok=False,
            errno_name="EPERM",
            message="mount is for admins",
        )
        audit.record(uid=5, gid=5, pid=1, command="boom", ok=False)
    first, second = _lines(path)
    assert first["result"] == "EPERM" and first["message"] == "mount is for admins"
    assert first["changes"] == {}
    assert second["result"] == "EIO"


def test_audit_new_file_is_created_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    old_umask = os.umask(0)
    try:
        AuditLog(str(path)).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_audit_existing_file_keeps_its_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"old": true}\n')
    path.chmod(0o640)
    with AuditLog(str(path)) as audit:
        audit.record(uid=0, gid=0, pid=1, command="detach a", ok=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    old, new = _lines(path)
    assert old == {"old": True}
    assert new["command"] == "detach a"


def test_audit_hostile_command_stays_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    nasty = 'attach "a\nb" /x\r\u2028 \udcff end'
    with AuditLog(str(path)) as audit:
        audit.record(uid=1, gid=1, pid=1, command=nasty, ok=False, errno_name="EINVAL")
    (record,) = _lines(path)
    assert record["command"] == nasty


@pytest.mark.timeout(60)
def test_audit_concurrent_records_are_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audits = [AuditLog(str(path)) for _ in range(4)]
    per_thread = 250
    padding = "x" * 3000  # records far above any stdio buffer would tear if split

    def work(n: int) -> None:
        for i in range(per_thread):
            audits[n].record(uid=n, gid=n, pid=i, command=f"hold a h{i} {padding}", ok=True)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for audit in audits:
        audit.close()
    records = _lines(path)
    assert len(records) == 4 * per_thread
    for n in range(4):
        mine = [r["pid"] for r in records if r["uid"] == n]
        assert mine == list(range(per_thread))


def test_audit_empty_path_writes_to_the_daemon_log_at_audit_level_issue_15(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Updated for issue 15: "" no longer means raw JSON on stderr but the daemon log, so the
    # foreground shows one format; the record itself is still one JSON object.
    from fusemount.host.logsetup import AUDIT, AUDIT_LOGGER

    caplog.set_level(AUDIT)
    root = logging.getLogger()
    root.setLevel(logging.ERROR)  # log.level = "error" must not filter audit records out
    audit = AuditLog("")
    audit.record(uid=0, gid=0, pid=7, command="set a ro", ok=True)
    audit.record(uid=0, gid=0, pid=7, command="release a h", ok=False, errno_name="ENOENT")
    audit.close()
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [r.levelno for r in records] == [AUDIT, AUDIT]
    assert json.loads(records[0].getMessage())["command"] == "set a ro"
    assert json.loads(records[1].getMessage())["result"] == "ENOENT"


def test_audit_write_errors_are_logged_once_and_never_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(str(tmp_path / "audit.log"))
    assert audit._fd is not None
    # Swap the descriptor for one that refuses writes, as a full or yanked disk would.
    ro_fd = os.open(str(tmp_path / "audit.log"), os.O_RDONLY)
    real_fd, audit._fd = audit._fd, ro_fd
    with caplog.at_level(logging.WARNING, logger="fusemount.audit"):
        for _ in range(3):
            audit.record(uid=0, gid=0, pid=1, command="detach a", ok=True)
        assert audit.dropped == 3
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        audit._fd = real_fd
        audit.record(uid=0, gid=0, pid=1, command="detach b", ok=True)
        assert any("writing again" in r.getMessage() for r in caplog.records)
    os.close(ro_fd)
    audit.close()
    audit.record(uid=0, gid=0, pid=1, command="after close", ok=True)
    assert [r["command"] for r in _lines(tmp_path / "audit.log")] == ["detach b"]


def test_audit_unopenable_path_raises_at_open(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AuditLog(str(tmp_path / "missing-dir" / "audit.log"))


def test_audit_refusal_record_is_at_most_512_bytes_issue_12(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    huge = "attach " + "\udcff\u2603x" * 400_000
    with AuditLog(str(path)) as audit:
        audit.record(uid=1000, gid=100, pid=1, command=huge, ok=False, errno_name="E2BIG",
                     message="m" * 5000)
    raw = path.read_bytes()
    assert len(raw) <= 512
    (record,) = _lines(path)
    assert record["result"] == "E2BIG"
    assert isinstance(record["command"], str) and record["command"].startswith("attach ")
    assert record["changes"] == {"command_bytes": len(huge.encode("utf-8", "surrogateescape"))}


def test_audit_throttled_refusals_are_summed_up_per_uid_issue_12(tmp_path: Path) -> None:
    from fusemount.control import audit as audit_mod

    now = [0.0]
    path = tmp_path / "audit.log"
    with AuditLog(str(path), clock=lambda: now[0]) as audit:
        written = [audit.record(uid=1000, gid=100, pid=1, command="x", ok=False,
                                errno_name="EACCES", throttle=True) for _ in range(200)]
        # Another user and an unthrottled caller are not held back by uid 1000's flood.
        assert audit.record(uid=1001, gid=100, pid=2, command="y", ok=False, throttle=True)
        assert audit.record(uid=0, gid=0, pid=3, command="z", ok=False)
        now[0] += audit_mod.REFUSAL_WINDOW_S
        audit.flush_suppressed()
    assert written.count(True) == audit_mod.REFUSALS_PER_WINDOW
    records = _lines(path)
    summaries = [r for r in records if r["result"] == "suppressed"]
    assert len(summaries) == 1
    expected = 200 - audit_mod.REFUSALS_PER_WINDOW
    assert summaries[0]["message"] == f"{expected} similar refusals from uid 1000 suppressed"
    assert len(records) == audit_mod.REFUSALS_PER_WINDOW + 2 + 1
