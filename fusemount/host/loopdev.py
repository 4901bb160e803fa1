"""Loop devices for `mount` of an image file (SPEC 4): bind an open image fd to a free loop.

The device is configured in one LOOP_CONFIGURE call with LO_FLAGS_AUTOCLEAR, so the kernel
unbinds it by itself once the last opener (our fd, then the filesystem mounted from it) is
gone: nothing here ever has to find and detach a device later, and a crash leaks nothing.
Never takes an image path: the caller opened and checked the image; we only pass its fd.

How this works: LOOP_CTL_GET_FREE names the lowest unbound device (creating one if needed);
another process may bind it between that answer and our LOOP_CONFIGURE, which then fails
EBUSY, so we close it and ask again, a bounded number of times.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from typing import Final

LOOP_CONTROL: Final = "/dev/loop-control"
LOOP_CTL_GET_FREE: Final = 0x4C82
LOOP_CONFIGURE: Final = 0x4C0A
LO_FLAGS_READ_ONLY: Final = 1
LO_FLAGS_AUTOCLEAR: Final = 4

# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
# loop_info64: u64 device, inode, rdevice, offset, sizelimit; u32 number, encrypt_type,
# encrypt_key_size, flags; u8 file_name[64], crypt_name[64], encrypt_key[32]; u64 init[2].
_LOOP_INFO64: Final = "5Q4I64s64s32s2Q"
_LOOP_CONFIG: Final = struct.Struct("<II" + _LOOP_INFO64 + "8Q")
assert _LOOP_CONFIG.size == 8 + 232 + 64

_ATTEMPTS: Final = 16
_NODE_WAIT_S: Final = 2.0  # a freshly created loopN node may lag LOOP_CTL_GET_FREE


def _get_free(control_fd: int) -> int:
    """The number of an unbound loop device; the kernel creates one if none is free."""
    return fcntl.ioctl(control_fd, LOOP_CTL_GET_FREE)


def _open_node(path: str) -> int:
    deadline = time.monotonic() + _NODE_WAIT_S
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _config(image_fd: int, read_only: bool) -> bytes:
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    info = (0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", 0, 0)
    return _LOOP_CONFIG.pack(image_fd, 0, *info, *(0,) * 8)


def attach_loop(image_fd: int, read_only: bool) -> tuple[int, str]:
    """Bind `image_fd` (a regular file opened for reading, and for writing unless
    `read_only`; not O_PATH) to a free loop device.

    Returns (loop fd, "/dev/loopN"). The caller owns the fd: the device stays bound while
    it or any mount made from the device is open, and unbinds itself after both are gone.
    Raises OSError: EBUSY if every attempt lost a race, EBADF for an unusable image fd,
    ENOENT if the loop driver is missing. May block briefly; run off the trio thread.
    """
    config = _config(image_fd, read_only)
    control_fd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_ATTEMPTS):
            path = f"/dev/loop{_get_free(control_fd)}"
            loop_fd = _open_node(path)
            try:
                fcntl.ioctl(loop_fd, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(loop_fd)
                if exc.errno == errno.EBUSY:  # another process bound it first
                    continue
                raise
            return loop_fd, path
    finally:
        os.close(control_fd)
    raise OSError(errno.EBUSY, f"no free loop device after {_ATTEMPTS} attempts")


def loop_backing_file(path: str) -> str | None:
    """The backing file of a bound loop device ("/dev/loopN"), None when it is unbound.
    Reads sysfs by name: for diagnostics and tests, never for decisions."""
    name = os.path.basename(path)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as sysfs:
            return sysfs.read().rstrip("\n")
    except OSError:
        return None
