"""Start, wait for and stop FUSE daemons from the measurement scripts (bench, walk_fds,
scale_subtrees): one way to do it, with the daemon's log at hand when it fails.

The test suite has its own fixture (tests/support/daemon.py) with stricter teardown
reporting; these helpers favour leaving the machine clean over reporting.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            escaped = line.split(" ")[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), escaped))
    return points


def is_mounted(path: Path) -> bool:
    return str(path) in mount_points()


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below base."""
    return [p for p in mount_points() if p == str(base) or p.startswith(f"{base}/")]


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def is_readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return bool(f.read())
    except OSError:
        return False


def wait_until(is_ready: Callable[[], bool], process: subprocess.Popen[bytes],
               timeout_s: float, label: str, log_path: Path) -> None:
    """Poll is_ready; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not is_ready():
        if process.poll() is not None:
            raise RuntimeError(
                f"{label} exited with {process.returncode} before it was ready:\n"
                + log_tail(log_path)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label} not ready after {timeout_s:.0f} s:\n" + log_tail(log_path))
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], mountpoint: Path, label: str,
         timeout_s: float = 15.0) -> None:
    """SIGTERM, bounded wait, SIGKILL, then a lazy unmount if the mount outlived it."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                print(f"{label}: no exit {timeout_s:.0f} s after SIGTERM; killing",
                      file=sys.stderr)
                process.kill()
                process.wait(timeout=timeout_s)
        if process.returncode not in (0, None):
            print(f"{label}: exited with {process.returncode}", file=sys.stderr)
    finally:
        if is_mounted(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@contextlib.contextmanager
def running_view(view: Path, state: Path, log_path: Path, *, config: Path | None = None,
                 python: str = sys.executable,
                 timeout_s: float = 20.0) -> Iterator[subprocess.Popen[bytes]]:
    """`fusemount serve view` as a child process, live once yielded, stopped on exit."""
    argv = [python, "-m", "fusemount", "serve", str(view), "--state", str(state)]
    if config is not None:
        argv += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT, env=env
        )
    try:
        wait_until(lambda: is_readable(view / ".fusemount" / "version"), process, timeout_s,
                   "fusemount", log_path)
        yield process
    finally:
        stop(process, view, "fusemount", timeout_s=30.0)
