"""fusemount.host.loopdev against real loop devices: bind, flags, races, autoclear.

Every device a test binds is autoclear, so closing its fds (in `finally`) frees it; the tests
wait for that, which is also what proves autoclear works.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusemount.host import loopdev
from fusemount.host import syscalls as sc
from tests.support.daemon import wait_until

pytestmark = [
    pytest.mark.skipif(not os.path.exists(loopdev.LOOP_CONTROL), reason="no /dev/loop-control"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(60),
]

IMAGE_SIZE = 16 << 20
MARKER = b"fusemount-loop-marker"


def sysfs(path: str, attribute: str) -> str:
    name = os.path.basename(path)
    return Path(f"/sys/block/{name}/{attribute}").read_text().strip()


def wait_unbound(path: str, timeout_s: float = 10.0) -> bool:
    return wait_until(lambda: loopdev.loop_backing_file(path) is None, timeout_s, 0.02)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "image.raw"
    with path.open("wb") as f:
        f.write(MARKER)
        f.truncate(IMAGE_SIZE)
    return path


@contextlib.contextmanager
def opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def attached(image_fd: int, read_only: bool) -> Iterator[tuple[int, str]]:
    loop_fd, path = loopdev.attach_loop(image_fd, read_only)
    try:
        yield loop_fd, path
    finally:
        os.close(loop_fd)
        assert wait_unbound(path), f"{path} still bound after its fd was closed"


def test_attach_loop_binds_image_with_autoclear(image: Path) -> None:
    with opened(image, os.O_RDWR) as image_fd:
        loop_fd, path = loopdev.attach_loop(image_fd, read_only=False)
        try:
            assert path.startswith("/dev/loop")
            assert loopdev.loop_backing_file(path) == str(image)
            assert sysfs(path, "loop/autoclear") == "1"
            assert sysfs(path, "ro") == "0"
            assert int(sysfs(path, "size")) * 512 == IMAGE_SIZE
            assert os.pread(loop_fd, len(MARKER), 0) == MARKER
        finally:
            os.close(loop_fd)
    assert wait_unbound(path)


def test_attach_loop_read_only_refuses_writes(image: Path) -> None:
    with opened(image, os.O_RDONLY) as image_fd, attached(image_fd, read_only=True) as (fd, path):
        assert sysfs(path, "ro") == "1"
        assert os.pread(fd, len(MARKER), 0) == MARKER
        with pytest.raises(OSError) as info:
            os.pwrite(fd, b"x" * 512, 0)
        assert info.value.errno in (errno.EPERM, errno.EROFS)
    assert image.read_bytes()[: len(MARKER)] == MARKER


def test_attach_loop_retries_when_free_device_is_taken(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(image, os.O_RDWR) as image_fd, attached(image_fd, read_only=True) as (_, taken):
        calls: list[int] = []
        real_get_free = loopdev._get_free

        def racy_get_free(control_fd: int) -> int:
            calls.append(control_fd)
            if len(calls) == 1:  # as if another process bound it after GET_FREE answered
                return int(taken.removeprefix("/dev/loop"))
            return real_get_free(control_fd)

        monkeypatch.setattr(loopdev, "_get_free", racy_get_free)
        with attached(image_fd, read_only=True) as (_, second):
            assert second != taken
            assert len(calls) == 2
            assert loopdev.loop_backing_file(taken) == str(image)


def test_attach_loop_opath_image_is_ebadf_and_leaks_nothing(image: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    with opened(image, os.O_PATH) as image_fd, pytest.raises(OSError) as info:
        loopdev.attach_loop(image_fd, read_only=True)
    assert info.value.errno == errno.EBADF
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_loop_backing_file_of_unknown_device_is_none() -> None:
    assert loopdev.loop_backing_file("/dev/loop-no-such-device") is None


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="no mkfs.ext4")
@pytest.mark.timeout(90)
def test_detached_mount_keeps_device_until_closed(image: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    with opened(image, os.O_RDWR) as image_fd:
        loop_fd, path = loopdev.attach_loop(image_fd, read_only=False)
        mount_fd = -1
        try:
            fs_fd = sc.fsopen("ext4")
            try:
                sc.fsconfig_set_string(fs_fd, "source", path)
                sc.fsconfig_create(fs_fd)
                mount_fd = sc.fsmount(fs_fd, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
            finally:
                os.close(fs_fd)
            os.close(loop_fd)
            loop_fd = -1
            time.sleep(0.2)
            assert loopdev.loop_backing_file(path) == str(image)  # the mount still uses it
            assert sc.statx(mount_fd, b"lost+found", 0).mode & 0o40000
        finally:
            for fd in (loop_fd, mount_fd):
                if fd >= 0:
                    os.close(fd)
    assert wait_unbound(path)
