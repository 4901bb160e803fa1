"""Fitting the host: mount(8) through mount.fuse3, umount stopping the daemon, sd_notify."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ctl import ctl_ok
from tests.support.daemon import is_mounted, lazy_unmount, reap, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_mount_t_fuse_fusemount_serves_and_umount_stops_the_daemon(
    test_root: Path, source: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if shutil.which("mount.fuse3") is None:
        pytest.skip("mount.fuse3 is not installed")
    # mount(8) runs helpers with the standard PATH only, so the command must be installed
    # there (`make install` does it); the test puts a wrapper in place only if none is.
    helper = Path("/usr/local/bin/fusemount")
    if helper.exists() or helper.is_symlink():
        pytest.skip("a fusemount command is already installed in /usr/local/bin")
    helper.write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m fusemount \"$@\"\n")
    helper.chmod(0o755)
    view = test_root / "fstab-view"
    view.mkdir()
    state = test_root / "fstab-state.json"
    (source / "f").write_text("via mount(8)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        subprocess.run(
            ["mount", "-t", "fuse.fusemount", "none", str(view), "-o",
             f"state={state},nofail,noatime"],
            check=True, env=env, timeout=30,
        )
        assert is_mounted(view, "fuse.fusemount")
        ctl_ok(view, f"attach s {source}")
        assert (view / "s" / "f").read_text() == "via mount(8)"
        pids = subprocess.run(["pgrep", "-f", f"fusemount serve {view}"],
                              capture_output=True, text=True).stdout.split()
        assert pids, "the daemon should be running"
        subprocess.run(["umount", str(view)], check=True, timeout=30)
        assert wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10)
        assert not is_mounted(view)
    finally:
        if is_mounted(view):
            lazy_unmount(view)
        helper.unlink()


@pytest.mark.timeout(60)
def test_daemon_sends_ready_and_stopping_to_notify_socket(test_root: Path) -> None:
    sock_path = test_root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(15)
    view = test_root / "notify-view"
    view.mkdir()
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusemount", "serve", str(view), "--state",
         str(test_root / "notify-state.json")],
        env=env, stderr=subprocess.DEVNULL,
    )
    try:
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready
        assert "STATUS=serving 0 subtrees" in ready
        assert (view / ".fusemount" / "version").read_text().startswith("fusemount ")
        proc.terminate()
        stopping = sock.recv(4096).decode()
        assert "STOPPING=1" in stopping
        assert proc.wait(timeout=15) == 0
    finally:
        sock.close()
        reap(proc)
        if is_mounted(view):
            lazy_unmount(view)
