"""A subtree while the daemon serves it: its spec, its pinned source, its open files.

The spec (policy, holders) may be replaced by control commands at any time; the source
descriptor never changes for the life of this object. Re-attaching a name creates a new
LiveSubtree with a new id, so kernel inodes of the old one can never reach the new source.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import trio

from fusemount.core.records import SubtreeId, SubtreeSpec
from fusemount.host.sources import OpenedSource


@dataclass(slots=True, eq=False)
class LiveSubtree:
    id: SubtreeId
    spec: SubtreeSpec
    source: OpenedSource | None  # None for a subtree that failed its checks on restart
    root_ino: int = 0
    open_files: int = 0  # file and directory handles; detach is EBUSY while > 0
    detached: bool = False  # name gone; closed when open_files drops to 0 (SPEC 4 force)
    last_access: float = field(default_factory=time.monotonic)
    requests: int = 0  # requests that reached this subtree (metrics)
    offload: bool = False  # its source may stall: backing calls go to threads (offload.py)
    limiter: trio.CapacityLimiter | None = None  # worker threads for offloaded calls
    stalled_since: float | None = None  # set while calls miss their deadline
    offload_until: float = 0.0  # watchdog: calls go to threads until then (offload.py)
    nowait_reads: bool = True  # cleared if the source refuses preadv2(RWF_NOWAIT)
    _mount_fd: int = -1  # non-O_PATH descriptor open_by_handle_at needs; opened lazily

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def live(self) -> bool:
        return not self.detached and self.source is not None

    def mount_fd(self) -> int:
        if self._mount_fd < 0:
            assert self.source is not None
            self._mount_fd = os.open(
                ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.source.root_fd
            )
        return self._mount_fd

    def close(self) -> None:
        """Release every descriptor of the source. Only after the last open file is closed."""
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1
        if self.source is not None:
            self.source.close()
            self.source = None
