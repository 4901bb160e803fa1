"""Where the daemon's log goes: stderr, syslog/the journal, or a file, at `log.level`, in one
format (issue 15 item 1; SPEC 7 `[log]`).

How this works: `DaemonLog.apply()` replaces the root logger's handlers with one handler for
`log.target`. `auto` means stderr in the foreground and syslog when detached (--background,
the mount helper, fstab), whose stdout and stderr are /dev/null. When the syslog socket
cannot be reached the log goes to stderr in the foreground, or to `log.file` (default
/var/log/fusemount/VIEW.log) when detached, and the first line there says why. Audit records
without a file of their own go through the same handler at level AUDIT, which `log.level`
never filters out, so the foreground shows one format: every line is
`TIME LEVEL LOGGER: MESSAGE`. `reopen()` (SIGHUP, after logrotate) reopens a log file.

Never: follow a symlink or trust a log file others may write (daemonfiles.open_own), or let
a broken log stop the daemon (logging reports its own write errors and goes on).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import socket
import sys

from fusemount.core.records import LogConfig
from fusemount.host import daemonfiles

AUDIT = 25  # between INFO and WARNING: always written, never mistaken for a warning
logging.addLevelName(AUDIT, "AUDIT")
AUDIT_LOGGER = "fusemount.audit"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # syslog adds time, host and ident

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _OwnFileHandler(logging.FileHandler):
    """A FileHandler whose file is opened as one of the daemon's own files (SPEC 8)."""

    def _open(self) -> io.TextIOWrapper:
        fd = daemonfiles.open_own(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                  0o600)
        return open(fd, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


class DaemonLog:
    """The daemon's logging, for one view; detached says whether stderr goes nowhere."""

    def __init__(self, view: str, detached: bool) -> None:
        self.view = view
        self.detached = detached
        self.where = "stderr"  # what the current handler writes to, for messages
        self._handler: logging.Handler | None = None

    def apply(self, config: LogConfig, debug: bool = False) -> None:
        """Switch to config's target and level. Raises OSError if a log file cannot be used."""
        target = config.target
        if target == "auto":
            target = "syslog" if self.detached else "stderr"
        note = ""
        handler: logging.Handler
        if target == "syslog":
            try:
                handler = _syslog_handler(config.syslog_socket)
                where = f"syslog ({config.syslog_socket})"
            except OSError as exc:
                fallback = "file" if self.detached else "stderr"
                handler, where = self._handler_for(fallback, config)
                note = (f"syslog socket {config.syslog_socket} unreachable ({exc.strerror or exc})"
                        f": logging to {where}")
        else:
            handler, where = self._handler_for(target, config)
        root = logging.getLogger()
        old = self._handler
        for existing in list(root.handlers):
            root.removeHandler(existing)  # basicConfig's, or ours from before a reload
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if debug else _LEVELS[config.level])
        # Set on the audit logger itself, so log.level never drops an audit record.
        logging.getLogger(AUDIT_LOGGER).setLevel(AUDIT)
        self._handler, self.where = handler, where
        if old is not None and old is not handler:
            old.close()
        if note:
            logging.getLogger("fusemount").warning("%s", note)

    def reopen(self) -> None:
        """Reopen the log file, if the log goes to one (after logrotate moved it)."""
        if isinstance(self._handler, _OwnFileHandler):
            self._handler.reopen()

    def close(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def _handler_for(self, target: str, config: LogConfig) -> tuple[logging.Handler, str]:
        if target == "file":
            path = config.file or daemonfiles.default_log_path(self.view)
            daemonfiles.make_dirs(os.path.dirname(path), 0o750)
            handler: logging.Handler = _OwnFileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            return handler, path
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        return handler, "stderr"


class _SysLogHandler(logging.handlers.SysLogHandler):
    def mapPriority(self, levelName: str) -> str:
        # Audit records are notices; the class map would send an unknown level as a warning.
        return "notice" if levelName == "AUDIT" else super().mapPriority(levelName)


def _syslog_handler(path: str) -> logging.Handler:
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    handler = _SysLogHandler(address=path, facility=_SysLogHandler.LOG_DAEMON,
                             socktype=socket.SOCK_DGRAM)
    handler.ident = f"fusemount[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter(SYSLOG_FORMAT))
    return handler
