"""One fusemount daemon under test, as a subprocess: start, wait, stop, kill, clean up.

Job: start `python -m fusemount serve VIEW --config CFG --state STATE` in the foreground with its
output in a log file, wait for the view to be live with a deadline, stop it cleanly, crash it on
request, and leave nothing mounted or running whatever happened (SPEC 2). Also reads
/proc/self/mountinfo for the fixtures.

Never: read from a pipe the daemon writes to (a full pipe would stall it), touch the view's
contents in teardown (a hung view would hang the run), or raise from cleanup().
Only foreground daemons: a `--background` serve exits at once and is not managed here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.support.ctl import Reply, ctl, ctl_err, ctl_ok, mounts, mounts_json
from tests.support.dirs import fresh_dir

VIEW_FSTYPE = "fuse.fusemount"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL_S = 0.02

_LEVEL_WORD = re.compile(r"(?:^|[\s:\[|])(WARNING|ERROR|CRITICAL)(?:[\s:\]|]|$)")
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


class DaemonError(RuntimeError):
    """The daemon did not do what the harness asked. log holds its output for this run."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(f"{message}\n--- daemon output ---\n{log}" if log else message)
        self.log = log


class DaemonStartError(DaemonError):
    """The daemon exited, or was not live by the deadline. returncode is None if still running."""

    def __init__(self, message: str, log: str, returncode: int | None) -> None:
        super().__init__(message, log)
        self.returncode = returncode


@dataclass(frozen=True, slots=True)
class MountEntry:
    mount_point: Path
    fstype: str
    source: str


def mountinfo() -> list[MountEntry]:
    """The mounts this process sees, from /proc/self/mountinfo (never touches a mount)."""
    entries: list[MountEntry] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 2:
                continue
            point = _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            entries.append(MountEntry(Path(point), tail[0], tail[1]))
    return entries


def is_mounted(path: Path, fstype: str | None = None) -> bool:
    """Is something (of fstype, if given) mounted exactly at path?"""
    return any(
        e.mount_point == path and (fstype is None or e.fstype == fstype) for e in mountinfo()
    )


def mounts_under(root: Path) -> list[MountEntry]:
    """Mounts at or below root, deepest first (the order to unmount them in)."""
    found = [e for e in mountinfo() if e.mount_point == root or root in e.mount_point.parents]
    return sorted(found, key=lambda e: len(e.mount_point.parts), reverse=True)


def lazy_unmount(path: Path) -> bool:
    """Detach whatever is mounted at path (umount -l, then fusermount3 -u -z). True if gone."""
    for argv in (["umount", "-l", str(path)], ["fusermount3", "-u", "-z", str(path)]):
        if not is_mounted(path):
            return True
        try:
            subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return not is_mounted(path)


def wait_until(check: Callable[[], object], timeout_s: float,
               interval_s: float = 0.05) -> bool:
    """Poll check until it returns something true or timeout_s passed; return whether it did
    (asking once more at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return bool(check())


def reap(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Kill proc if it still runs, and wait for it: a helper process never outlives its test."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def problems_in_log(text: str) -> list[str]:
    """Lines of daemon output that should fail a test: tracebacks, WARNING/ERROR/CRITICAL lines.

    Audit records (in the daemon log by default, as `... AUDIT fusemount.audit: {JSON}`) and
    bare JSON lines are checked for tracebacks only: a command's text may contain any word.
    """

    def bad(line: str) -> bool:
        if "Traceback (most recent call last)" in line or "Fatal Python error" in line:
            return True
        # An audit record in the daemon log ("... AUDIT fusemount.audit: {json}"): only the
        # part before the record says anything about the daemon's health.
        line = line.split(" fusemount.audit: ", 1)[0]
        return not line.lstrip().startswith("{") and _LEVEL_WORD.search(line) is not None

    return [line for line in text.splitlines() if bad(line)]


@dataclass(slots=True)
class CleanupReport:
    """What cleanup() found and had to do."""

    was_running: bool = False  # cleanup had to stop a live daemon
    exit_code: int | None = None  # of the daemon that cleanup stopped
    needed_sigkill: bool = False  # SIGTERM was not enough within the grace period
    mount_left: bool = False  # the view was still mounted after the daemon had gone
    killed_by_test: bool = False  # the test crashed the daemon on purpose: a dead mount is fine
    still_mounted: bool = False  # even the lazy unmount failed
    died_on_its_own: int | None = None  # exit code of a live daemon nobody stopped or killed
    errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What should fail the test that owned this daemon."""
        found = list(self.errors)
        if self.died_on_its_own is not None:
            found.append(f"daemon died during the test with exit code {self.died_on_its_own}")
        if self.was_running and self.needed_sigkill:
            found.append("daemon ignored SIGTERM: it had to be killed")
        elif self.was_running and self.exit_code != 0:
            found.append(f"daemon exited {self.exit_code} on SIGTERM, not 0")
        if self.mount_left and not self.killed_by_test and not self.needed_sigkill:
            found.append("daemon exited but left the view mounted")
        if self.still_mounted:
            found.append("view still mounted after umount -l")
        return found


class Daemon:
    """One daemon process; its files (config, default state, log) live in workdir.

    command is what runs `serve`: `python -m fusemount` unless a test needs another program.
    """

    def __init__(self, workdir: Path, command: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.command = tuple(command) or (sys.executable, "-m", "fusemount")
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "daemon.log"
        self.view: Path | None = None
        self.state: Path = workdir / "state.json"
        self.config_text = ""
        self.extra_args: tuple[str, ...] = ()
        self.killed_by_test = False  # the last process was SIGKILLed by kill()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current run's output starts in the log
        self._live = False  # became ready and was not stopped or killed since

    # -- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self, current_run_only: bool = False) -> str:
        """The daemon's output (stdout and stderr), of every run or of the current one."""
        try:
            with open(self.log_path, "rb") as f:
                if current_run_only:
                    f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # -- life cycle ------------------------------------------------------------------------

    def start(
        self,
        view: Path,
        config_text: str = "",
        state: Path | None = None,
        extra_args: Sequence[str] = (),
        timeout_s: float = 15.0,
    ) -> None:
        """Start serving view and return once it is live.

        Raises DaemonStartError, with the daemon's output, as soon as the process exits, or
        when the view is not live within timeout_s. Either way cleanup() is still needed.
        """
        if self.running:
            raise DaemonError("start() while the previous daemon still runs")
        self.view = Path(os.path.realpath(view.parent)) / view.name
        self.state = state if state is not None else self.workdir / "state.json"
        self.config_text = config_text
        self.extra_args = tuple(extra_args)
        self.killed_by_test = False
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_text)
        argv = [
            *self.command,
            "serve",
            str(self.view),
            "--config",
            str(self.config_path),
            "--state",
            str(self.state),
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # Own session: the harness decides which signal the daemon gets, not the terminal.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None and self.view is not None
        deadline = time.monotonic() + timeout_s
        version = self.view / ".fusemount" / "version"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise DaemonStartError(
                    f"daemon exited with {code} before {self.view} was live",
                    self.stderr_text(current_run_only=True),
                    code,
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonStartError(
                    f"{self.view} not live within {timeout_s} s",
                    self.stderr_text(current_run_only=True),
                    None,
                )
            if is_mounted(self.view, VIEW_FSTYPE) and _readable_within(version, remaining):
                self._live = True
                return
            time.sleep(POLL_INTERVAL_S)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (SPEC 2 wants 0).

        Raises DaemonError if it is still running after timeout_s (it is then SIGKILLed).
        """
        if self._proc is None:
            raise DaemonError("stop() before start()")
        self._live = False
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise DaemonError(
                    f"daemon still running {timeout_s} s after SIGTERM; killed",
                    self.stderr_text(current_run_only=True),
                ) from None
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would: the dead mount stays for the next start to reuse."""
        if self._proc is None:
            raise DaemonError("kill() before start()")
        self._live = False
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self.killed_by_test = True

    def restart(self, config_text: str | None = None, timeout_s: float = 15.0) -> None:
        """Stop cleanly if running, then start again on the same view and state file."""
        if self.view is None:
            raise DaemonError("restart() before start()")
        if self.running:
            code = self.stop()
            if code != 0:
                raise DaemonError(f"daemon exited {code} on SIGTERM", self.stderr_text(True))
        self.start(
            self.view,
            self.config_text if config_text is None else config_text,
            self.state,
            self.extra_args,
            timeout_s,
        )

    def cleanup(self, grace_s: float = 5.0) -> CleanupReport:
        """Leave nothing running or mounted: SIGTERM, wait, SIGKILL, umount -l. Never raises."""
        report = CleanupReport(killed_by_test=self.killed_by_test)
        try:
            proc = self._proc
            if proc is not None and proc.poll() is not None and self._live:
                report.died_on_its_own = proc.returncode
            self._live = False
            if proc is not None and proc.poll() is None:
                report.was_running = True
                proc.send_signal(signal.SIGTERM)
                try:
                    report.exit_code = proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    report.needed_sigkill = True
                    proc.kill()
                    report.exit_code = proc.wait(grace_s)
        except Exception as exc:  # teardown must go on to the unmount whatever happened
            report.errors.append(f"stopping the daemon: {exc!r}")
        try:
            if self.view is not None and is_mounted(self.view):
                report.mount_left = True
                report.still_mounted = not lazy_unmount(self.view)
        except Exception as exc:
            report.errors.append(f"unmounting {self.view}: {exc!r}")
        return report


def _readable_within(path: Path, timeout_s: float) -> bool:
    """Can path be read within timeout_s? The read runs in a thread because a FUSE mount whose
    daemon is stuck blocks it; killing the daemon later releases the thread."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            path.read_bytes()
        except OSError:
            result.append(False)
        else:
            result.append(True)

    worker = threading.Thread(target=attempt, name="fusemount-ready-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(result) and result[0]


@dataclass(slots=True)
class ViewHandle:
    """A live view made by the view_factory fixture, with shortcuts to its control file."""

    path: Path
    state: Path
    daemon: Daemon
    workdir: Path

    def ctl(self, command: str | bytes) -> Reply:
        return ctl(self.path, command)

    def ok(self, command: str | bytes) -> dict[str, object]:
        return ctl_ok(self.path, command)

    def err(self, command: str | bytes) -> int:
        return ctl_err(self.path, command)

    def mounts(self) -> list[str]:
        return mounts(self.path)

    def mounts_json(self) -> list[dict[str, object]]:
        return mounts_json(self.path)

    @property
    def pid(self) -> int:
        """The pid of the daemon serving the view; fails the test unless it is running."""
        pid = self.daemon.pid
        assert pid is not None and self.daemon.running, "the view's daemon is not running"
        return pid

    def restart(self, config_text: str | None = None) -> None:
        self.daemon.restart(config_text)

    def start_again(self) -> None:
        """Start the stopped (or killed) daemon again: same view, config, state and options."""
        self.daemon.start(self.path, self.daemon.config_text, self.state, self.daemon.extra_args)


class ViewFactory(Protocol):
    """The view_factory fixture: start a daemon on a fresh view and return once it is live."""

    def __call__(
        self, config_text: str = "", state: Path | None = None, extra_args: Sequence[str] = ()
    ) -> ViewHandle: ...


def new_view(parent: Path, prefix: str, state: Path | None = None) -> ViewHandle:
    """A handle on a fresh, not yet started view: a new 0755 workdir under parent with an empty
    mnt/ in it and a Daemon for it. Keep the handle for teardown before daemon.start(): a
    failed start needs cleaning up too."""
    workdir = fresh_dir(parent, prefix)
    path = workdir / "mnt"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    daemon = Daemon(workdir)
    return ViewHandle(path, state if state is not None else daemon.state, daemon, workdir)


def teardown_problems(handle: ViewHandle, log_ok: bool = False) -> list[str]:
    """Stop the view's daemon (cleanup(): never raises) and say what should fail its test: the
    cleanup's problems and, unless log_ok, the tracebacks and WARNING/ERROR lines it logged."""
    problems = [f"{handle.path}: {p}" for p in handle.daemon.cleanup().problems()]
    if not log_ok:
        text = handle.daemon.stderr_text()
        bad = problems_in_log(text)
        if bad:
            problems.append(
                f"{handle.path}: daemon logged problems (mark the test daemon_log_ok if "
                f"expected):\n  " + "\n  ".join(bad) + f"\n--- daemon output ---\n{text}"
            )
    return problems
