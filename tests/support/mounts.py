"""Host-side probes for daemon-made filesystems: images, loop devices, detached mounts.

Job: build ext4 images, ask losetup which loop devices back an image, wait for one to be
released, and find the daemon's descriptor of a detached mount so its flags can be read
through /proc/PID/fd (a detached mount has no path to statvfs). Never: detach a loop device
that is not bound to one of our images, or look into a mount through anything but the view
or the daemon's own descriptor.
Serves the test side of SPEC 4 `mount`.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

IMAGE_BYTES = 32 << 20
RELEASE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class LoopDevice:
    name: str  # /dev/loopN
    autoclear: bool
    read_only: bool


def make_ext4_image(path: Path, content: Path | None = None) -> Path:
    """A sparse IMAGE_BYTES file formatted ext4 (populated from content, if given)."""
    with open(path, "wb") as f:
        f.truncate(IMAGE_BYTES)
    argv = ["mkfs.ext4", "-q", "-F"]
    if content is not None:
        argv += ["-d", str(content)]
    subprocess.run([*argv, str(path)], check=True, capture_output=True, timeout=60)
    return path


def loop_devices_of(image: Path) -> list[LoopDevice]:
    """The loop devices currently bound to image (losetup -j)."""
    result = subprocess.run(
        ["losetup", "--list", "--noheadings", "--raw", "-O", "NAME,AUTOCLEAR,RO",
         "-j", str(image)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    devices = []
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) == 3:
            devices.append(LoopDevice(words[0], words[1] == "1", words[2] == "1"))
    return devices


def wait_loop_released(image: Path, timeout_s: float = RELEASE_WAIT_S) -> list[LoopDevice]:
    """Poll until no loop device backs image; returns what is still bound at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        bound = loop_devices_of(image)
        if not bound or time.monotonic() >= deadline:
            return bound
        time.sleep(0.05)


def release_loops(image: Path) -> None:
    """Teardown: unbind (or mark for autoclear, if still in use) every loop on image."""
    try:
        for device in loop_devices_of(image):
            subprocess.run(["losetup", "-d", device.name], capture_output=True, timeout=30,
                           check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def fsck_clean(image: Path) -> subprocess.CompletedProcess[str]:
    """e2fsck -fn: a forced read-only check; returncode 0 means clean."""
    return subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                          timeout=60, check=False)


def dev_of_major_minor(text: str) -> int:
    major, minor = text.split(":")
    return os.makedev(int(major), int(minor))


def mountinfo_devs(pid: int | str = "self") -> list[tuple[int, str]]:
    """(st_dev, mount point) of every mount in /proc/PID/mountinfo."""
    found = []
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5:
                found.append((dev_of_major_minor(fields[2]), fields[4]))
    return found


def daemon_fds_on(pid: int, dev: int) -> list[str]:
    """Paths /proc/PID/fd/N of the daemon's descriptors that lie on filesystem dev."""
    found = []
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        path = f"{base}/{name}"
        try:
            if os.stat(path).st_dev == dev:
                found.append(path)
        except OSError:
            continue  # closed meanwhile, or a socket/pipe that stat cannot follow
    return found


def statvfs_flags_of_mount(pid: int, dev: int) -> int:
    """f_flag of the daemon's detached mount on dev (ST_NOSUID, ST_NODEV, ST_RDONLY...)."""
    paths = daemon_fds_on(pid, dev)
    if not paths:
        raise AssertionError(f"daemon {pid} holds no descriptor on device {dev:#x}")
    return os.statvfs(paths[0]).f_flag
