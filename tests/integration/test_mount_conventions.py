"""mount(8) conventions for the helper form (issue 15 item 5, SPEC 2): /etc/fstab lines mount
through mount.fuse3, the mount table shows the fstab source so a second `mount -a` sees the
view mounted (as for sshfs and bindfs), and the exit status is a mount(8) helper's (0, 1
incorrect invocation, 32 mount failure).

mount(8) runs helpers with the standard PATH only, so the command must be installed in
/usr/local/bin (`make install` does it); the test puts a wrapper there only if none is, and
skips otherwise (it would test someone else's install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import is_mounted, lazy_unmount, mountinfo, wait_until

REPO = Path(__file__).resolve().parents[2]
HELPER = Path("/usr/local/bin/fusemount")


@pytest.fixture
def installed_helper() -> Iterator[None]:
    if shutil.which("mount.fuse3") is None:
        pytest.skip("mount.fuse3 is not installed")
    try:
        # O_EXCL: never replace an install, or another session's wrapper
        fd = os.open(HELPER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    except FileExistsError:
        pytest.skip("a fusemount command is already installed in /usr/local/bin")
    with os.fdopen(fd, "w") as f:
        f.write(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m fusemount \"$@\"\n")
    try:
        yield
    finally:
        HELPER.unlink()


def _mount(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *argv], capture_output=True, text=True, timeout=60,
                          check=False)


def _entries(view: Path) -> list[tuple[str, str]]:
    return [(e.fstype, e.source) for e in mountinfo() if e.mount_point == view]


def _umount_and_wait(view: Path) -> None:
    pids = subprocess.run(["pgrep", "-f", f"fusemount serve {view}"],
                          capture_output=True, text=True, check=False).stdout.split()
    subprocess.run(["umount", str(view)], check=True, timeout=30)
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 15)


@pytest.mark.timeout(90)
def test_fstab_source_is_the_fsname_and_mount_a_twice_is_a_no_op(
    installed_helper: None, test_root: Path
) -> None:
    config = test_root / "fstab-conventions.toml"
    config.write_text("[limits]\nmax_subtrees = 8\n")
    by_config, by_none = test_root / "fstab-config-view", test_root / "fstab-none-view"
    by_config.mkdir()
    by_none.mkdir()
    fstab = test_root / "fstab"
    fstab.write_text(
        f"{config} {by_config} fuse.fusemount state={test_root}/fstab-c.json,nofail 0 0\n"
        f"none {by_none} fuse.fusemount state={test_root}/fstab-n.json 0 0\n")
    try:
        first = _mount("-a", "-T", str(fstab))
        assert first.returncode == 0, first.stderr
        assert _entries(by_config) == [("fuse.fusemount", str(config))]
        assert _entries(by_none) == [("fuse.fusemount", "none")]
        # Before: the table said `fusemount`, fstab another source: mount -a tried again, 32.
        second = _mount("-a", "-T", str(fstab))
        assert second.returncode == 0, second.stderr
        assert len(_entries(by_config)) == 1 and len(_entries(by_none)) == 1
        assert (by_none / ".fusemount" / "version").read_text().startswith("fusemount ")
    finally:
        for view in (by_config, by_none):
            if is_mounted(view):
                _umount_and_wait(view)
            if is_mounted(view):
                lazy_unmount(view)


@pytest.mark.timeout(90)
def test_mount_helper_exit_status_is_mount8s(installed_helper: None, test_root: Path) -> None:
    view = test_root / "exit-code-view"
    view.mkdir()
    try:
        bad_option = _mount("-t", "fuse.fusemount", "none", str(view), "-o", "bogus")
        assert bad_option.returncode == 1, bad_option
        assert "unknown mount option 'bogus'" in bad_option.stderr
        (view / "not-empty").write_text("")
        failure = _mount("-t", "fuse.fusemount", "none", str(view), "-o",
                         f"state={test_root}/exit-code.json")
        assert failure.returncode == 32, failure
        assert "not empty" in failure.stderr
        assert not is_mounted(view)
    finally:
        if is_mounted(view):
            lazy_unmount(view)


def test_mount_helper_form_is_recognised_and_typos_are_not() -> None:
    from fusemount.cli.commands import looks_like_mount_helper

    assert looks_like_mount_helper(["none", "/srv/view", "-o", "rw"])
    assert looks_like_mount_helper(["/etc/fusemount/view.toml", "/srv/view"])
    assert not looks_like_mount_helper(["atach", "/srv/view"])
    assert not looks_like_mount_helper(["none"])
