"""os.stat_result -> pyfuse3.EntryAttributes, with our inode number, never st_ino."""

from __future__ import annotations

import os
import stat

from pyfuse3 import EntryAttributes, InodeT, ModeT


def fill(e: EntryAttributes, ino: int, st: os.stat_result, entry_timeout: float,
         attr_timeout: float) -> EntryAttributes:
    e.st_ino = InodeT(ino)
    e.generation = 0  # gate._attrs sets a node's own (recycled st_ino, inodes.py)
    e.entry_timeout = entry_timeout
    e.attr_timeout = attr_timeout
    e.st_mode = ModeT(st.st_mode)
    e.st_nlink = st.st_nlink
    e.st_uid = st.st_uid
    e.st_gid = st.st_gid
    e.st_rdev = st.st_rdev
    e.st_size = st.st_size
    e.st_blksize = st.st_blksize
    e.st_blocks = st.st_blocks
    e.st_atime_ns = st.st_atime_ns
    e.st_mtime_ns = st.st_mtime_ns
    e.st_ctime_ns = st.st_ctime_ns
    return e


def gated(ino: int, st: os.stat_result, mode: int, owner: int, entry_timeout: float,
          attr_timeout: float) -> EntryAttributes:
    """A subtree root presented as its gate (SPEC 5): the source root's attributes with the
    gate's owner and permission bits. No set-ID or sticky bits: the kernel would judge a
    sticky root against the gate's owner, where only the backing's own check is right."""
    e = fill(EntryAttributes(), ino, st, entry_timeout, attr_timeout)
    e.st_mode = ModeT(stat.S_IFDIR | mode)
    e.st_uid = owner
    return e


def synthetic(ino: int, mode: int, nlink: int, time_ns: int, timeout: float,
              entry_timeout: float | None = None) -> EntryAttributes:
    """Attributes of a daemon-made object (root, control files): root-owned, size 0."""
    e = EntryAttributes()
    e.st_ino = InodeT(ino)
    e.generation = 0
    e.entry_timeout = timeout if entry_timeout is None else entry_timeout
    e.attr_timeout = timeout
    e.st_mode = ModeT(mode)
    e.st_nlink = nlink
    e.st_uid = 0
    e.st_gid = 0
    e.st_size = 0
    e.st_blksize = 4096
    e.st_blocks = 0
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = time_ns
    return e
