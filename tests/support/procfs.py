"""What a process holds, read from /proc."""

from __future__ import annotations

import contextlib
import os


def fd_targets(pid: int | str = "self") -> set[str]:
    """Where the descriptors of pid point (paths as /proc shows them)."""
    out = set()
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            out.add(os.readlink(f"{base}/{name}"))
    return out
