"""Running as a service (issue 15 items 1, 3, 4, 9): logs that reach somewhere in one format,
SIGHUP reloads without unmounting, a start-up order that survives an early SIGTERM, and
declarative `[[subtree]]` tables reconciled at start and on reload.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusemount.daemon.serve import serving_pid
from fusemount.host import daemonfiles
from tests.support.control import (
    audit_records,
    fusemount,
    make_dir,
    reap_unmanaged,
    record_of,
)
from tests.support.ctl import ctl_as
from tests.support.daemon import (
    REPO_ROOT,
    ViewFactory,
    ViewHandle,
    is_mounted,
    lazy_unmount,
    reap,
    wait_until,
)
from tests.support.dirs import SourceFactory
from tests.support.users import Users

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|AUDIT|WARNING|ERROR) "
                  r"[\w.]+: ")


def _hup(view: ViewHandle, config_text: str | None = None) -> None:
    """Optionally rewrite the config, send SIGHUP and wait until the reload is over."""
    if config_text is not None:
        view.daemon.config_path.write_text(config_text)
    done = view.daemon.stderr_text().count("signal SIGHUP: reloading")
    pid = view.pid
    os.kill(pid, signal.SIGHUP)

    def finished() -> bool:
        text = view.daemon.stderr_text()
        return text.count("signal SIGHUP: reloading") > done and (
            text.count("reloaded ") + text.count("reload refused") > done)

    assert wait_until(finished, 15), view.daemon.stderr_text()


def _reconciled(view: ViewHandle) -> None:
    """Wait until the daemon is ready: the view answers as soon as it is mounted, declared
    subtrees are attached after that (their user look-ups and sources run in workers)."""
    assert wait_until(lambda: "ready: " in view.daemon.stderr_text(current_run_only=True), 15), \
        view.daemon.stderr_text()


@contextlib.contextmanager
def _syslog(path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def _received(sock: socket.socket, until: Callable[[list[str]], bool]) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not until(got):
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(65536).decode("utf-8", "replace"))
    return got


# --- item 1: logs --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_foreground_output_is_one_format_with_audit_records_in_it_issue_15(
    view: ViewHandle, source: Path
) -> None:
    view.ok(f"attach data {source}")
    assert view.ctl("frobnicate WARNING").errno == errno.EINVAL
    lines = [line for line in view.daemon.stderr_text().splitlines() if line.strip()]
    assert lines and all(LINE.match(line) for line in lines), lines
    audit = [line for line in lines if " AUDIT fusemount.audit: " in line]
    records = [json.loads(line.split(" fusemount.audit: ", 1)[1]) for line in audit]
    assert [r["result"] for r in records] == ["ok", "EINVAL"]


@pytest.mark.timeout(60)
def test_log_level_warning_hides_info_but_never_audit_records_issue_15(
    view_factory: ViewFactory, source: Path
) -> None:
    view = view_factory('[log]\nlevel = "warning"\n')
    view.ok(f"attach data {source}")
    text = view.daemon.stderr_text()
    assert " INFO " not in text
    assert " AUDIT fusemount.audit: " in text


@pytest.mark.timeout(60)
def test_syslog_target_sends_records_to_the_socket_issue_15(
    view_factory: ViewFactory, scratch: Path, source: Path
) -> None:
    with _syslog(scratch / "log.sock") as sock:
        view = view_factory(f'[log]\ntarget = "syslog"\nsyslog_socket = "{scratch}/log.sock"\n')
        view.ok(f"attach data {source}")
        got = _received(sock, lambda got: any("fusemount.audit" in g for g in got))
        assert view.daemon.stop() == 0  # while syslog still listens
    pid = view.daemon.pid
    assert any(g.startswith(f"<30>fusemount[{pid}]: INFO ") for g in got), got  # daemon.info
    audit = [g for g in got if "fusemount.audit" in g]
    assert audit and audit[0].startswith(f"<29>fusemount[{pid}]: AUDIT ")  # daemon.notice
    assert "attach data" in audit[0]
    assert view.daemon.stderr_text().strip() == ""  # everything went to syslog


@pytest.mark.daemon_log_ok
@pytest.mark.timeout(60)
def test_missing_syslog_socket_in_the_foreground_falls_back_to_stderr_and_says_so_issue_15(
    view_factory: ViewFactory, scratch: Path
) -> None:
    view = view_factory(f'[log]\ntarget = "syslog"\nsyslog_socket = "{scratch}/none.sock"\n')
    text = view.daemon.stderr_text()
    assert f"syslog socket {scratch}/none.sock unreachable" in text
    assert "logging to stderr" in text


@pytest.mark.timeout(90)
def test_detached_daemon_logs_to_syslog_and_audits_to_a_per_view_file_issue_15(
    scratch: Path, source: Path
) -> None:
    view = make_dir(scratch, "mnt")
    config = scratch / "config.toml"
    config.write_text(f'[log]\nsyslog_socket = "{scratch}/log.sock"\n')
    audit = Path(daemonfiles.default_audit_path(str(view)))
    try:
        with _syslog(scratch / "log.sock") as sock:
            result = fusemount("serve", str(view), "--background", "--config", str(config),
                               "--state", str(scratch / "state.json"))
            assert result.returncode == 0, result.stderr
            assert fusemount("attach", str(view), "data", str(source)).returncode == 0
            got = _received(sock, lambda got: any("serving" in g for g in got))
        assert any(f"serving {view}" in g for g in got), got
        records = audit_records(audit)
        assert [r["command"] for r in records] == [f"attach data {source}"]
        assert oct(audit.stat().st_mode & 0o777) == oct(0o600)
        assert fusemount("stop", str(view)).returncode == 0
    finally:
        leftovers = reap_unmanaged(view)
        with contextlib.suppress(FileNotFoundError):
            audit.unlink()
    assert leftovers == []


@pytest.mark.timeout(90)
def test_detached_daemon_without_syslog_logs_to_a_file_and_says_why_issue_15(
    scratch: Path,
) -> None:
    view = make_dir(scratch, "mnt")
    config = scratch / "config.toml"
    config.write_text(f'[log]\nsyslog_socket = "{scratch}/none.sock"\n'
                      f'file = "{scratch}/daemon.log"\naudit = "{scratch}/audit.jsonl"\n')
    try:
        result = fusemount("serve", str(view), "--background", "--config", str(config),
                           "--state", str(scratch / "state.json"))
        assert result.returncode == 0, result.stderr
        assert fusemount("stop", str(view)).returncode == 0
        text = (scratch / "daemon.log").read_text()
        assert f"syslog socket {scratch}/none.sock unreachable" in text
        assert f"serving {view}" in text and "stopped cleanly" in text
    finally:
        leftovers = reap_unmanaged(view)
    assert leftovers == []


@pytest.mark.timeout(60)
def test_sighup_reopens_the_log_file_after_logrotate_issue_15(
    view_factory: ViewFactory, scratch: Path, source: Path
) -> None:
    log_file, audit = scratch / "daemon.log", scratch / "audit.jsonl"
    view = view_factory(f'[log]\ntarget = "file"\nfile = "{log_file}"\naudit = "{audit}"\n')
    view.ok(f"attach data {source}")
    log_file.rename(scratch / "daemon.log.1")
    audit.rename(scratch / "audit.jsonl.1")
    os.kill(view.pid, signal.SIGHUP)
    assert wait_until(lambda: log_file.exists() and "reloaded" in log_file.read_text(), 15)
    view.ok("detach data")
    assert [r["command"] for r in audit_records(audit)] == ["detach data"]
    assert "serving" in (scratch / "daemon.log.1").read_text()


# --- item 3: SIGHUP reloads -------------------------------------------------------------------


@pytest.mark.daemon_log_ok
@pytest.mark.timeout(90)
def test_sighup_reloads_admins_and_limits_and_keeps_the_view_mounted_issue_15(
    view_factory: ViewFactory, new_source: SourceFactory, users: Users
) -> None:
    first, second = new_source(), new_source()
    (first / "f").write_text("x")
    view = view_factory('[access]\nadmins = ["root"]\n')
    view.ok(f"attach data {first}")
    with open(view.path / "data" / "f") as held:
        assert ctl_as(users.alice, view.path, "hold data H").errno == errno.EACCES
        _hup(view, '[access]\nadmins = ["root", "fmt_alice"]\n[limits]\nmax_subtrees = 1\n')
        assert ctl_as(users.alice, view.path, "hold data H").errno is None
        assert view.err(f"attach more {second}") == errno.ENOSPC
        metrics = (view.path / ".fusemount" / "metrics").read_text()
        assert 'fusemount_limit{limit="max_subtrees"} 1' in metrics
        # A config that does not load is logged; the running one stays, nothing unmounts.
        _hup(view, "[access\nadmins = [")
        assert "reload refused, keeping the running configuration" in view.daemon.stderr_text()
        assert ctl_as(users.alice, view.path, "release data H").errno is None
        assert view.err(f"attach more {second}") == errno.ENOSPC
        assert held.read() == "x"
    assert view.daemon.running and is_mounted(view.path)
    assert (view.path / "data" / "f").read_text() == "x"


# --- item 4: start-up order ------------------------------------------------------------------


@contextlib.contextmanager
def _notifying_daemon(scratch: Path) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket,
                                                       Path]]:
    """A foreground daemon on a fresh view that reports to a NOTIFY_SOCKET of ours, as under
    systemd's Type=notify: (process, the socket, the view). Killed and unmounted after."""
    sock_path = scratch / "notify.sock"
    view = make_dir(scratch, "mnt")
    with _syslog(sock_path) as sock:
        sock.settimeout(15)
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO_ROOT))
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusemount", "serve", str(view), "--state",
             str(scratch / "state.json")], env=env, stderr=subprocess.DEVNULL)
        try:
            yield proc, sock, view
        finally:
            reap(proc)
            lazy_unmount(view)


@pytest.mark.timeout(60)
def test_sigterm_right_after_ready_exits_0_and_unmounts_issue_15(scratch: Path) -> None:
    with _notifying_daemon(scratch) as (proc, sock, view):
        assert "READY=1" in sock.recv(4096).decode()
        proc.terminate()  # at once: no grace period after READY
        assert proc.wait(timeout=15) == 0
        assert not is_mounted(view)
        assert not os.path.exists(daemonfiles.pidfile_path(str(view)))


@pytest.mark.timeout(60)
def test_relative_paths_resolve_against_the_start_directory_then_cwd_is_root_issue_15(
    scratch: Path, source: Path
) -> None:
    work = make_dir(scratch, "work")
    (work / "cfg.toml").write_text("")
    view = make_dir(scratch, "mnt")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fusemount", "serve", "../mnt", "--background",
             "--config", "cfg.toml", "--state", "sub/state.json"],
            cwd=work, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True,
            text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert fusemount("attach", str(view), "data", str(source)).returncode == 0
        assert "data" in (work / "sub" / "state.json").read_text()
        pid = serving_pid(str(view))  # its command line names the view as given: ../mnt
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert fusemount("stop", str(view)).returncode == 0
    finally:
        leftovers = reap_unmanaged(view)
    assert leftovers == []


# --- item 9: declarative subtrees -------------------------------------------------------------


def _declared(*tables: str) -> str:
    return "".join(f"[[subtree]]\n{table}\n" for table in tables)


@pytest.mark.daemon_log_ok
@pytest.mark.timeout(90)
def test_declared_subtrees_attach_at_start_and_reconcile_on_sighup_issue_15(
    view_factory: ViewFactory, new_source: SourceFactory
) -> None:
    one, two, three = new_source(), new_source(), new_source()
    (one / "f").write_text("1")
    view = view_factory(_declared(f'name = "one"\nsource = "{one}"\nro = true',
                                  'name = "tmp"\nfstype = "tmpfs"\nsource = "none"\n'
                                  'options = "size=1m"'))
    _reconciled(view)
    assert (view.path / "one" / "f").read_text() == "1"
    assert record_of(view.mounts_json(), "one").get("ro") is True
    assert {r["name"] for r in view.mounts_json()} == {"one", "tmp"}
    view.ok(f"attach mine {three}")  # attached through ctl: never touched by the config
    state = json.loads(view.state.read_text())
    assert {s["name"]: s["declared"] for s in state["subtrees"]} == {
        "one": True, "tmp": True, "mine": False}
    # Changed options are set, a new table is attached, a dropped one is detached.
    _hup(view, _declared(f'name = "one"\nsource = "{one}"\nallow = ["*:ro"]',
                         f'name = "two"\nsource = "{two}"'))
    records = {r["name"]: r for r in view.mounts_json()}
    assert set(records) == {"one", "two", "mine"}
    assert records["one"].get("ro") is False
    (view.path / "one" / "g").write_text("rw now")
    # A reload with nothing to change runs no command (and writes no audit record).
    audited = view.daemon.stderr_text().count(" AUDIT fusemount.audit: ")
    _hup(view)
    assert view.daemon.stderr_text().count(" AUDIT fusemount.audit: ") == audited
    # A dropped subtree with a file open under it stays, and goes once it is free.
    (two / "busy").write_text("b")
    with open(view.path / "two" / "busy"):
        _hup(view, _declared(f'name = "one"\nsource = "{one}"'))
        assert {r["name"] for r in view.mounts_json()} == {"one", "two", "mine"}
        assert "declared subtree two kept" in view.daemon.stderr_text()
    # The kernel sends the release after close() returns: reload until the daemon saw it.
    for _ in range(20):
        _hup(view)
        if {r["name"] for r in view.mounts_json()} == {"one", "mine"}:
            break
        time.sleep(0.1)
    assert {r["name"] for r in view.mounts_json()} == {"one", "mine"}
    # Dropped from the config while the daemon was down: detached at the next start.
    view.restart(_declared(f'name = "two"\nsource = "{two}"'))
    _reconciled(view)
    assert {r["name"] for r in view.mounts_json()} == {"two", "mine"}
    assert not any(line.startswith("{") for line in view.daemon.stderr_text().splitlines())


@pytest.mark.timeout(60)
def test_sighup_follows_systemds_reload_protocol_issue_15(scratch: Path) -> None:
    with _notifying_daemon(scratch) as (proc, sock, view):
        assert "READY=1" in sock.recv(4096).decode()
        proc.send_signal(signal.SIGHUP)
        reloading = sock.recv(4096).decode()
        assert "RELOADING=1" in reloading and "MONOTONIC_USEC=" in reloading
        assert "READY=1" in sock.recv(4096).decode()
        assert proc.poll() is None and is_mounted(view)
        proc.terminate()
        assert proc.wait(timeout=15) == 0


@pytest.mark.daemon_log_ok
@pytest.mark.timeout(90)
def test_declared_subtree_that_cannot_attach_is_listed_failed_and_retried_issue_15(
    view_factory: ViewFactory, scratch: Path
) -> None:
    missing = scratch / "later"
    view = view_factory(_declared(f'name = "later"\nsource = "{missing}"'))
    _reconciled(view)
    record = record_of(view.mounts_json(), "later")
    assert record["state"] == "failed" and "later" in str(record["reason"])
    assert "declared subtree later not attached" in view.daemon.stderr_text()
    # Still failed after a restart, and attached by the first reload once the source exists.
    view.restart()
    _reconciled(view)
    assert record_of(view.mounts_json(), "later")["state"] == "failed"
    missing.mkdir()
    (missing / "f").write_text("here")
    _hup(view)
    assert record_of(view.mounts_json(), "later")["state"] == "attached"
    assert (view.path / "later" / "f").read_text() == "here"
