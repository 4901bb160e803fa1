"""The daemon's own files (SPEC 8, issue 12 item 14): private directories whatever the umask,
no symlink followed in the last component, files others may write refused, lock holders."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fusemount.host import daemonfiles

REPO = Path(__file__).resolve().parents[2]


def test_make_dirs_gives_every_level_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        daemonfiles.make_dirs(str(tmp_path / "a" / "b" / "c"), 0o777)
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


def test_make_dirs_refuses_a_directory_others_may_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(daemonfiles.UnsafeFile, match="writable by others"):
        daemonfiles.make_dirs(str(shared), 0o700)
    shared.chmod(0o1777)  # sticky, like /tmp: nobody may replace our entries
    daemonfiles.make_dirs(str(shared), 0o700)


def test_open_own_refuses_symlinks_shared_and_foreign_files(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    target.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(daemonfiles.UnsafeFile, match="symlink"):
        daemonfiles.open_own(str(link), os.O_RDONLY)
    target.chmod(0o666)
    with pytest.raises(daemonfiles.UnsafeFile, match="writable by others"):
        daemonfiles.open_own(str(target), os.O_RDONLY)
    target.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(target, 65534, 65534)
        with pytest.raises(daemonfiles.UnsafeFile, match="belongs to uid 65534"):
            daemonfiles.open_own(str(target), os.O_RDONLY)
        os.chown(target, 0, 0)
    os.close(daemonfiles.open_own(str(target), os.O_RDONLY))


def test_open_own_creates_without_group_or_other_write(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        os.close(daemonfiles.open_own(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT, 0o666))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_lock_holder_names_the_process_holding_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    fd = daemonfiles.open_own(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert daemonfiles.try_lock(fd)
        daemonfiles.write_whole(fd, f"{os.getpid()}\n")
        code = ("from fusemount.host import daemonfiles; "
                f"h = daemonfiles.holder_of({str(path)!r}); print(h.pid, h.text)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
        assert out.split() == [str(os.getpid()), str(os.getpid())]
    finally:
        os.close(fd)
    assert daemonfiles.holder_of(str(path)) is None
