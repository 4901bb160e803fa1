"""The audit log: one JSON object per control command, appended as one line (SPEC 8).

Each record is encoded in full and appended with a single write() on an O_APPEND
descriptor, so records from concurrent writers never interleave or tear.

Bounded (SPEC 6): a refused command is recorded in at most REFUSAL_RECORD_MAX bytes (the
command and message are clipped, the original size kept), and a caller whose refusals are
throttled gets at most REFUSALS_PER_WINDOW records per REFUSAL_WINDOW_S; the rest are counted
and summed up in one record ("N similar refusals from uid U suppressed"), so one user's
flood of bad commands costs a few KiB a minute, never the disk.

Never: raise into the caller once the log is open (a command that was carried out
must still get its reply; a failing log is reported through `logging`, once per
outage); change the mode of a log file that already exists (the operator chose it).
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from fusemount.host.logsetup import AUDIT, AUDIT_LOGGER

log = logging.getLogger(__name__)
_to_log = logging.getLogger(AUDIT_LOGGER)
_to_log.setLevel(AUDIT)  # log.level never filters audit records out

REFUSAL_RECORD_MAX = 512  # bytes of one refused command's record, newline included (SPEC 6)
REFUSALS_PER_WINDOW = 10  # throttled callers: refusal records per uid per window
REFUSAL_WINDOW_S = 60.0
_MESSAGE_MAX = 160  # characters of a refusal's message kept in its record


@dataclass(slots=True)
class _Refusals:
    """One uid's refusals in the current window."""

    start: float
    written: int = 0
    suppressed: int = 0


class AuditLog:
    """Appends audit records to a file, or to the daemon log when path is "" (logger
    fusemount.audit at level AUDIT: the foreground shows one format, issue 15).

    Opening a file that cannot be opened raises OSError: `serve` should stop with it.
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic,
                 opener: Callable[[str], int] | None = None) -> None:
        self.path = path
        self._clock = clock
        self._refusals: dict[int, _Refusals] = {}  # throttled uids with a current window
        self.suppressed = 0  # refusal records not written (summed up instead), for metrics
        self._open: Callable[[str], int] = opener or (lambda name: os.open(
            name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        # None means the daemon log (logsetup decides where that goes).
        self._fd: int | None = None
        # True while writes fail: the failure is logged once, not once per command.
        self._failing = False
        self.dropped = 0  # records lost to write errors, for metrics
        self._closed = False
        if path:
            # 0600: records name users and sources; an existing file keeps its mode.
            self._fd = self._open(path)

    def record(
        self,
        *,
        uid: int,
        gid: int,
        pid: int,
        command: str,
        ok: bool,
        errno_name: str | None = None,
        message: str = "",
        changes: dict[str, object] | None = None,
        throttle: bool = False,
    ) -> bool:
        """Append one record; False if a throttled refusal was counted instead of written.

        A refusal (ok False) is clipped to REFUSAL_RECORD_MAX bytes; with throttle, it counts
        against uid's REFUSALS_PER_WINDOW. Never raises; may block briefly on the file write.
        """
        if not ok and throttle and not self._admit_refusal(uid):
            return False
        # EIO, not a blank: a failure without an errno was an internal error.
        result = "ok" if ok else (errno_name or "EIO")
        self._append(lambda: _encode(uid=uid, gid=gid, pid=pid, command=command, result=result,
                                     message=message, changes=changes) if ok else
                     _encode_refusal(uid=uid, gid=gid, pid=pid, command=command, result=result,
                                     message=message))
        return True

    def flush_suppressed(self) -> None:
        """Write the summary of every window that has ended (call it now and then)."""
        now = self._clock()
        for uid, window in list(self._refusals.items()):
            if now - window.start >= REFUSAL_WINDOW_S:
                del self._refusals[uid]
                self._summarise(uid, window)

    def _admit_refusal(self, uid: int) -> bool:
        now = self._clock()
        window = self._refusals.get(uid)
        if window is not None and now - window.start >= REFUSAL_WINDOW_S:
            del self._refusals[uid]
            self._summarise(uid, window)
            window = None
        if window is None:
            window = self._refusals[uid] = _Refusals(start=now)
        if window.written < REFUSALS_PER_WINDOW:
            window.written += 1
            return True
        window.suppressed += 1
        self.suppressed += 1
        return False

    def _summarise(self, uid: int, window: _Refusals) -> None:
        if not window.suppressed:
            return
        count = window.suppressed
        self._append(lambda: _encode(
            uid=uid, gid=-1, pid=0, command="", result="suppressed",
            message=f"{count} similar refusals from uid {uid} suppressed",
            changes={"suppressed": count, "window_s": REFUSAL_WINDOW_S}))

    def _append(self, encode: Callable[[], bytes]) -> None:
        try:
            self._write(encode())
        except Exception as exc:  # a broken audit log must not fail the command
            self.dropped += 1
            if not self._failing:
                self._failing = True
                log.error("audit log %s: cannot write record: %s", self._name(), exc)
            return
        if self._failing:
            self._failing = False
            log.warning(
                "audit log %s: writing again (%d records lost so far)",
                self._name(),
                self.dropped,
            )

    def reopen(self) -> None:
        """Open the file again (after logrotate moved it). On failure the old descriptor
        stays and the failure is logged; never raises."""
        if not self.path or self._closed:
            return
        try:
            fd = self._open(self.path)
        except OSError as exc:
            log.error("audit log %s: cannot reopen, still writing the old file: %s",
                      self.path, exc)
            return
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Close the file (not stderr). Idempotent; later records are dropped and logged."""
        pending, self._refusals = self._refusals, {}
        for uid, window in pending.items():
            self._summarise(uid, window)
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.error("audit log %s: close failed: %s", self._name(), exc)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, line: bytes) -> None:
        if self._closed:
            raise OSError("audit log is closed")
        if self._fd is None:
            _to_log.log(AUDIT, "%s", line.decode("ascii").rstrip("\n"))
            return
        written = os.write(self._fd, line)
        if written < len(line):
            # Only a full disk or a signal does this; finishing the line keeps the
            # file parseable, even if another writer's line now follows the first part.
            view = memoryview(line)[written:]
            while view:
                view = view[os.write(self._fd, view) :]

    def _name(self) -> str:
        return self.path or "<daemon log>"


def _encode(
    *,
    uid: int,
    gid: int,
    pid: int,
    command: str,
    result: str,
    message: str,
    changes: dict[str, object] | None,
) -> bytes:
    record = {
        "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "uid": uid,
        "gid": gid,
        "pid": pid,
        "command": command,
        "result": result,
        "message": message,
        "changes": changes if changes is not None else {},
    }
    # ensure_ascii: a command decoded with surrogateescape still encodes, and every
    # control character (newline included) is escaped, so a record is one line.
    text = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=_jsonable)
    return (text + "\n").encode("ascii")


def _encode_refusal(*, uid: int, gid: int, pid: int, command: str, result: str,
                    message: str) -> bytes:
    """A refusal's record in at most REFUSAL_RECORD_MAX bytes: what does not fit of the command
    is cut, and `command_bytes` then says how long it was (SPEC 6)."""
    message = message if len(message) <= _MESSAGE_MAX else message[:_MESSAGE_MAX] + "..."
    line = _encode(uid=uid, gid=gid, pid=pid, command=command, result=result, message=message,
                   changes=None)
    if len(line) <= REFUSAL_RECORD_MAX:
        return line
    size = len(command.encode("utf-8", "surrogateescape"))
    changes: dict[str, object] = {"command_bytes": size}
    # Room left for the command's JSON string: escapes make it up to 6 bytes per character.
    base = _encode(uid=uid, gid=gid, pid=pid, command="", result=result, message=message,
                   changes=changes)
    room = REFUSAL_RECORD_MAX - len(base) - len("...")
    clipped = command[: max(room, 0)]
    while clipped and len(json.dumps(clipped, ensure_ascii=True)) - 2 > room:
        clipped = clipped[: len(clipped) * 3 // 4]
    return _encode(uid=uid, gid=gid, pid=pid, command=clipped + "...", result=result,
                   message=message, changes=changes)


def _jsonable(value: object) -> object:
    """What json cannot encode itself: enums by value, sets sorted, the rest as text."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)
