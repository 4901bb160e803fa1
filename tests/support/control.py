"""Shared helpers for the control-plane end-to-end tests (SPEC 2, 4, 6, 7, 8, 9).

Job: run the `fusemount` command line, read the state file and the view's listings, look at
the daemon's descriptors from outside, and filter the daemon log for problems a test did not
expect. Never: touch a view's contents from a teardown path, or guess at what the daemon meant
(a reply that is not what the SPEC says fails the test that asked).
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.ctl import Reply, ctl_as
from tests.support.daemon import (
    REPO_ROOT,
    Daemon,
    DaemonStartError,
    ViewHandle,
    is_mounted,
    lazy_unmount,
    problems_in_log,
    wait_until,
)
from tests.support.users import User

# SPEC 4 "Errors": every errno a refused ctl write may carry.
DOCUMENTED_ERRNOS = frozenset(
    {
        "EINVAL",
        "E2BIG",
        "ENOENT",
        "EEXIST",
        "ENOTDIR",
        "ELOOP",
        "EACCES",
        "EPERM",
        "ENOSPC",
        "EDQUOT",
        "EBUSY",
    }
)


def fusemount(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m fusemount ARGS` as root; output captured, return code not checked."""
    return subprocess.run(
        [sys.executable, "-m", "fusemount", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def make_dir(parent: Path, name: str, mode: int = 0o755, owner: User | None = None) -> Path:
    """A fresh directory parent/name with exactly mode (the umask does not apply), owned by
    root or by owner."""
    path = parent / name
    path.mkdir()
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return path


def replace_dir(path: Path) -> None:
    """`rm -rf path; mkdir path`, made sure to give the new directory another inode number
    (ext4 would happily reuse the freed one, which would make the replacement invisible)."""
    fresh = path.with_name(path.name + ".new")
    fresh.mkdir()
    fresh.chmod(0o755)
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    fresh.rename(path)


def audit_config(path: Path) -> str:
    """The [log] table that sends the audit log to path (SPEC 8)."""
    return f'[log]\naudit = "{path}"\n'


def audit_records(path: Path) -> list[dict[str, object]]:
    """The audit log at path: one JSON object a line (SPEC 4, 8); anything else fails."""
    records = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def state_doc(state: Path) -> dict[str, object]:
    """The state file parsed; fails the test unless it is a JSON object."""
    doc = json.loads(state.read_bytes())
    assert isinstance(doc, dict), f"state file is not a JSON object: {doc!r}"
    return doc


def state_table(state: Path) -> dict[str, list[str]]:
    """name -> holders, from the state file (parsed strictly: it must always parse)."""
    doc = state_doc(state)
    entries = doc.get("subtrees")
    assert isinstance(entries, list), f"state file has no subtrees list: {doc!r}"
    table: dict[str, list[str]] = {}
    for entry in entries:
        assert isinstance(entry, dict)
        name, holders = entry["name"], entry.get("holders", [])
        assert isinstance(name, str) and isinstance(holders, list)
        assert name not in table, f"state file lists {name} twice"
        table[name] = [str(h) for h in holders]
    return table


def record_of(records: Iterable[dict[str, object]], name: str) -> dict[str, object]:
    """The mounts.json record of name; fails the test if it is not listed exactly once."""
    found = [r for r in records if r.get("name") == name]
    assert len(found) == 1, f"{name} listed {len(found)} times in {list(records)!r}"
    return found[0]


def names_listed(view: Path) -> set[str]:
    """Names in the view root, .fusemount excluded."""
    return set(os.listdir(view)) - {".fusemount"}


def fd_identities(pid: int) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every object a process holds a descriptor for.

    stat() on /proc/PID/fd/N follows the magic link to the very object, whatever path (or
    none, for a detached mount) it has.
    """
    found: set[tuple[int, int]] = set()
    fd_dir = f"/proc/{pid}/fd"
    for entry in os.listdir(fd_dir):
        try:
            st = os.stat(f"{fd_dir}/{entry}")
        except OSError:
            continue  # closed meanwhile, or an anonymous object stat cannot reach
        found.add((st.st_dev, st.st_ino))
    return found


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def identity(path: Path) -> tuple[int, int]:
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino


def unexpected_log_lines(daemon: Daemon, expected: Iterable[str]) -> list[str]:
    """Problem lines in the daemon's log (tracebacks, WARNING/ERROR) that contain none of the
    expected fragments. For tests marked daemon_log_ok that still want every other check."""
    fragments = tuple(expected)
    return [
        line
        for line in problems_in_log(daemon.stderr_text())
        if "Traceback" in line or not any(f in line for f in fragments)
    ]


def start_fails(scratch: Path, view: Path, state: Path, why: str) -> str:
    """Start a daemon on view that must refuse to serve: it exits non-zero, its output names
    why, and nothing stays running or mounted. Returns that output."""
    daemon = Daemon(make_dir(scratch, "work"))
    try:
        with pytest.raises(DaemonStartError) as failed:
            daemon.start(view, "", state, timeout_s=10)
        assert failed.value.returncode not in (None, 0)
        assert why in failed.value.log, failed.value.log
    finally:
        problems = daemon.cleanup().problems()
    assert problems == []
    assert not is_mounted(view)
    return failed.value.log


def serving_pids(view: Path) -> list[int]:
    """Pids of `fusemount serve VIEW` processes (found by command line)."""
    pids: list[int] = []
    want = str(view).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"fusemount" in argv and b"serve" in argv and want in argv:
            pids.append(int(entry))
    return pids


def reap_unmanaged(view: Path, grace_s: float = 5.0) -> list[str]:
    """Stop daemons started with --background on view (SIGTERM, then SIGKILL) and unmount.

    Never raises; returns what it had to do, which a test reports as a problem.
    """
    problems: list[str] = []
    try:
        for pid in serving_pids(view):
            problems.append(f"daemon {pid} still served {view}")
            try:
                os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, grace_s):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not lazy_unmount(view):
            problems.append(f"could not unmount {view}")
    except Exception as exc:  # a cleanup report beats a cleanup crash
        problems.append(f"cleaning {view}: {exc!r}")
    return problems


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Has pid exited (or become a zombie) within timeout_s?"""

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().split(b") ", 1)[1][:1] == b"Z"
        except OSError:
            return True

    return wait_until(gone, timeout_s, 0.02)


def snapshot(view: ViewHandle) -> tuple[list[dict[str, object]], bytes | None]:
    """What a refused command must leave alone: mounts.json and the state file's bytes."""
    state = view.state.read_bytes() if view.state.exists() else None
    return view.mounts_json(), state


def check_refusal(reply: Reply, code: int, command: str | bytes) -> str:
    """The write failed with code and the reply agrees; returns the reply's message."""
    name = errno_mod.errorcode[code]
    assert reply.errno == code, f"expected {name}: " + reply.describe(command)
    assert reply.data.get("ok") is False, reply.describe(command)
    assert reply.data.get("errno") == name, reply.describe(command)
    message = reply.data.get("message")
    assert isinstance(message, str) and message, reply.describe(command)
    return message


def refused(view: ViewHandle, command: str | bytes, code: int, user: User | None = None) -> str:
    """Run command (as user, if given) and check it was refused with code and changed nothing
    (SPEC 4: "A refused command changes nothing"). Returns the reply's message."""
    before = snapshot(view)
    if user is None:
        reply = view.ctl(command)
    else:
        assert isinstance(command, str)
        reply = ctl_as(user, view.path, command)
    message = check_refusal(reply, code, command)
    assert snapshot(view) == before, f"refused {command!r} changed the table or the state file"
    return message
