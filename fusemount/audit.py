"""The audit log: one JSON object per control command, appended as one line (SPEC 8).

Each record is encoded in full and appended with a single write() on an O_APPEND
descriptor, so records from concurrent writers never interleave or tear.

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
import sys
from types import TracebackType

log = logging.getLogger(__name__)


class AuditLog:
    """Appends audit records to a file, or to stderr when path is "".

    Opening a file that cannot be opened raises OSError: `serve` should stop with it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # None means stderr, looked up at each record so redirection is honoured.
        self._fd: int | None = None
        # True while writes fail: the failure is logged once, not once per command.
        self._failing = False
        self.dropped = 0  # records lost to write errors, for metrics
        self._closed = False
        if path:
            # 0600: records name users and sources; an existing file keeps its mode.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

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
    ) -> None:
        """Append one record. Never raises; may block briefly on the file write."""
        try:
            line = _encode(
                uid=uid,
                gid=gid,
                pid=pid,
                command=command,
                # EIO, not a blank: a failure without an errno was an internal error.
                result="ok" if ok else (errno_name or "EIO"),
                message=message,
                changes=changes,
            )
            self._write(line)
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

    def close(self) -> None:
        """Close the file (not stderr). Idempotent; later records are dropped and logged."""
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
            stream = sys.stderr
            stream.write(line.decode("ascii"))
            stream.flush()
            return
        written = os.write(self._fd, line)
        if written < len(line):
            # Only a full disk or a signal does this; finishing the line keeps the
            # file parseable, even if another writer's line now follows the first part.
            view = memoryview(line)[written:]
            while view:
                view = view[os.write(self._fd, view) :]

    def _name(self) -> str:
        return self.path or "<stderr>"


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


def _jsonable(value: object) -> object:
    """What json cannot encode itself: enums by value, sets sorted, the rest as text."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return str(value)
