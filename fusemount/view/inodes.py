"""Kernel inode numbers <-> backing objects held by descriptor; lookup counts; forget.

How this works. A Node is one backing object as seen through one subtree, keyed
(subtree id, st_dev, st_ino), so a file reachable from two subtrees with different
grants is two kernel inodes. pyfuse3 gives the kernel one number for both the FUSE node
id and `st_ino`, so that number must be stable (SPEC 3): it is `K xor st_ino`, where K is
a 63-bit hash of the subtree's name and of which filesystem inside the source the object
lives on, "relative to the source": the source's own filesystem is simply "the source",
and a filesystem mounted inside it is named by where it was first met (K of the
filesystem above it, the st_ino of the directory holding the mount point, and the mount
point's name), not by its st_dev, which changes whenever a tmpfs or loop device is
mounted again. Within one filesystem of one subtree the xor is a bijection, so two
objects never share a number; across filesystems and subtrees two plain numbers meet only
if st_ino1 ^ st_ino2 == K1 ^ K2, which for inode numbers below 2^32 needs two keys that
agree in their top 31 bits (a chance of 2^-31 per pair of filesystems), and any number
already taken in the table (or in the control range below FIRST_DYNAMIC_INO) is resolved
by probing a deterministic sequence from it. Hence: the same object keeps its number
after the kernel forgets it (drop_caches, max_inodes trimming), after descriptor eviction,
and across restarts of the daemon with the same subtree names.

Reuse of st_ino. Filesystems recycle inode numbers of deleted files. While the kernel still
holds the old node (its number, our table entry) and we no longer hold the old object's
descriptor, a new object with the same st_ino finds that entry. adopt() then compares the
new descriptor's file handle with the one we minted for the old object (handles carry the
filesystem's own generation), and if they differ, or the old object was unlinked through
the view, it bumps the node's FUSE `generation`: the kernel then marks its old inode bad
instead of mistaking the new file for it (fuse_stale_inode).

Descriptors. A node holds an O_PATH descriptor while it is in use. To keep the daemon's
descriptors bounded whatever the kernel caches (SPEC 6), idle descriptors sit in an LRU and
the oldest is closed after minting a file handle for it (name_to_handle_at); the next use
re-opens it with open_by_handle_at, on the subtree's own detached mount or, for a
filesystem mounted inside the source, on one non-O_PATH directory descriptor kept per such
mount (at most MAX_MOUNT_FDS), so it can only ever reach the object it was minted from.
Objects that cannot be re-opened that way (ramfs and other filesystems without file
handles, mounts past the cap) are "stuck": once more than `max_stuck_fds` are stuck,
cold_entries() asks the kernel to forget the coldest of them, whatever max_inodes says. The
kernel can be slow to (an invalidation waits for the directory's lock, which a listing of
that very directory keeps taking), so past twice that the coldest stuck descriptors are
closed anyway: such an "orphan" is re-opened, if the kernel uses it before forgetting it,
by its name in its parent's descriptor (one openat with O_NOFOLLOW, never a path), and only
if that name still holds the same (st_dev, st_ino); otherwise ESTALE. Idle descriptors,
evictable or stuck, never exceed `max_cached_fds`.

Memory is bounded the same way from the other side: past `max_inodes` known objects,
cold_entries() names the least recently found ones by where the kernel found them (parent
inode, name), and the caller asks the kernel to drop those entries; the kernel then forgets
the inodes. Entries in use (a cwd, an open file) stay, so the table can exceed the cap by
what is in use.

Known gaps. A collision resolved by probing depends on which object the table met first,
so after a restart the second object of a colliding pair may get another number (the
2^-31-per-pair accident above, or a source with inode numbers near 2^63). Two objects never
share a number while both are in the table, but one the kernel has forgotten is not
checked against (the same accident). A filesystem mounted at two places inside one source
is keyed by the place first met, which may differ after a restart. Renaming or
re-attaching a subtree under another name renumbers it; detaching and re-attaching a name
to another source reuses the key space (numbers the old subtree still uses are probed
around).

Invariants: `lookups` changes only in adopt(), count_lookup() and forget(); a node leaves
the tables exactly when its lookup count reaches zero (subtree roots: when also detached).
Every method is plain `def`: with trio, "find the node, bump its count" is one step.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import islice

from fusemount.core.records import SubtreeId
from fusemount.host import syscalls
from fusemount.view.live import LiveSubtree

log = logging.getLogger(__name__)

FIRST_DYNAMIC_INO = 1000  # 1..999 are the view's own objects (ctlfiles)
MAX_MOUNT_FDS = 256  # directory descriptors kept to re-open handles on nested mounts
_REOPEN_FLAGS = os.O_PATH | os.O_CLOEXEC
_KEY_BITS = (1 << 63) - 1
# Entries asked for in this window count as already gone: the kernel's forgets take a
# moment, and a hint that no longer matches (renamed since) never brings one.
_TRIM_PENDING_S = 2.0


def _key(*parts: bytes | int | str) -> int:
    """A 63-bit hash of parts; ints and strings are encoded unambiguously."""
    h = hashlib.blake2b(digest_size=8, person=b"fusemount-ino")
    for part in parts:
        if isinstance(part, int):
            data = part.to_bytes(8, "little", signed=False)
        elif isinstance(part, str):
            data = part.encode()
        else:
            data = part
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little") & _KEY_BITS


@dataclass(slots=True, eq=False)
class Node:
    ino: int
    subtree: LiveSubtree
    dev: int
    st_ino: int
    fd: int  # -1 while evicted; owned by the node unless is_root
    lookups: int = 0  # changed only by InodeTable.adopt(), count_lookup() and forget()
    pins: int = 0  # open handles on this node: never evicted while > 0
    handle: bytes | None = None
    mount_fd: int = -1  # where handle re-opens: a nested mount's fd; -1 = the subtree's
    evictable: bool = True  # False: "stuck", no way to re-open it (see the module doc)
    orphan: bool = False  # stuck, and its descriptor closed: re-opens by (parent, name)
    is_root: bool = False
    # FUSE generation: bumped when this number passes to a new object with a recycled
    # st_ino while the kernel may still hold the old one. Changed only by adopt().
    generation: int = 0
    # Where the kernel last found it: a hint for asking the kernel to forget it when the
    # table is over budget (invalidate_entry), never used to resolve anything.
    parent: int = 0
    name: bytes = b""
    trimming: bool = False  # an invalidation was requested; waiting for the forget
    # When the kernel last got an entry of it (a lookup counted, time.monotonic()): readdir
    # lists it by name alone while that entry is surely still valid (ops.readdir).
    found_at: float = 0.0


@dataclass(frozen=True, slots=True)
class InodeStats:
    nodes: int
    held_fds: int
    cached_fds: int
    evictions: int
    reopens: int
    stuck_fds: int = 0
    mount_fds: int = 0


class InodeTable:
    def __init__(self, max_cached_fds: int, max_inodes: int = 1 << 62,
                 max_stuck_fds: int | None = None) -> None:
        self.max_cached_fds = max_cached_fds
        self.max_inodes = max_inodes
        # A quarter of the idle budget may be stuck before the kernel is asked to forget
        # some: the rest stays for descriptors that eviction can recycle.
        self.max_stuck_fds = max_stuck_fds if max_stuck_fds is not None else max(
            16, max_cached_fds // 4)
        self._by_ino: dict[int, Node] = {}  # in order of last found: trimming takes the head
        self._by_key: dict[tuple[SubtreeId, int, int], Node] = {}
        self._lru: OrderedDict[int, Node] = OrderedDict()  # idle evictable nodes with an fd
        self._stuck: OrderedDict[int, Node] = OrderedDict()  # idle nodes that cannot evict
        self._dev_keys: dict[tuple[SubtreeId, int], int] = {}  # K of each filesystem seen
        self._mount_fds: dict[tuple[SubtreeId, int], int] = {}  # (subtree, mnt id) -> fd
        # Subtrees whose source filesystem has no file handles (ramfs): its st_dev, so its
        # nodes count as stuck from the start and trimming begins before the cache is full.
        self._handleless: dict[SubtreeId, int] = {}
        self._held = 0  # descriptors owned by nodes
        self._asked: deque[tuple[float, int]] = deque()  # (when, how many) cold_entries asked
        self._evictions = 0
        self._reopens = 0

    def __len__(self) -> int:
        return len(self._by_ino)

    def statistics(self) -> InodeStats:
        return InodeStats(len(self._by_ino), self._held, len(self._lru) + len(self._stuck),
                          self._evictions, self._reopens, len(self._stuck),
                          len(self._mount_fds))

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def node(self, ino: int) -> Node:
        found = self._by_ino.get(ino)
        if found is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return found

    def nodes_of(self, subtree: LiveSubtree) -> list[Node]:
        return [n for n in self._by_ino.values() if n.subtree is subtree]

    # --- numbering --------------------------------------------------------------------------

    def _dev_key(self, subtree: LiveSubtree, dev: int, parent: Node | None,
                 name: bytes) -> int:
        """K of the filesystem dev inside subtree (see the module doc); remembered for the
        subtree's life, so every object of one filesystem is numbered with the same K."""
        found = self._dev_keys.get((subtree.id, dev))
        if found is not None:
            return found
        base = _key("subtree", subtree.name)
        if parent is not None and parent.subtree is subtree:
            above = self._dev_keys.get((subtree.id, parent.dev), base)
            key = _key("mount", above, parent.st_ino, name)
        else:
            key = _key("dev", base, dev)  # no place known: as stable as st_dev is
        self._dev_keys[(subtree.id, dev)] = key
        return key

    def _number(self, key: int, st_ino: int) -> int:
        ino = key ^ st_ino
        while ino < FIRST_DYNAMIC_INO or ino in self._by_ino:
            ino = _key("probe", ino)  # deterministic, so restarts probe alike
        return ino

    def stable_ino(self, subtree: LiveSubtree, dev: int, st_ino: int) -> int:
        """The number an object of a known filesystem gets when nothing collides (tests)."""
        return self._dev_keys[(subtree.id, dev)] ^ st_ino

    # --- adding nodes -----------------------------------------------------------------------

    def add_root(self, subtree: LiveSubtree) -> Node:
        """The node of a subtree's root; its descriptor belongs to the subtree's source."""
        assert subtree.source is not None
        st = os.fstat(subtree.source.root_fd)
        # The source's own filesystem is keyed by the subtree alone: its st_dev may differ
        # after a restart (loop devices, tmpfs) while its objects are the same.
        key = _key("subtree", subtree.name)
        self._dev_keys[(subtree.id, st.st_dev)] = key
        if subtree.source.mnt_id < 0:
            self._handleless[subtree.id] = st.st_dev
        node = Node(self._number(key, st.st_ino), subtree, st.st_dev, st.st_ino,
                    subtree.source.root_fd, evictable=False, is_root=True)
        self._by_ino[node.ino] = node
        self._by_key[(subtree.id, node.dev, node.st_ino)] = node
        subtree.root_ino = node.ino
        return node

    def find(self, subtree: LiveSubtree, dev: int, st_ino: int) -> Node | None:
        return self._by_key.get((subtree.id, dev, st_ino))

    def adopt(self, subtree: LiveSubtree, fd: int, dev: int, st_ino: int,
              parent: int = 0, name: bytes = b"") -> Node:
        """Take ownership of fd (an O_PATH descriptor of dev/st_ino) and count one lookup.

        If the object is already known, fd is closed (or revives an evicted node; a new
        object behind a recycled st_ino gets a new generation). parent and name record
        where the kernel found it (see Node.parent).
        """
        node = self._by_key.get((subtree.id, dev, st_ino))
        if node is None:
            key = self._dev_key(subtree, dev, self._by_ino.get(parent), name)
            node = Node(self._number(key, st_ino), subtree, dev, st_ino, fd,
                        parent=parent, name=name,
                        evictable=self._handleless.get(subtree.id) != dev)
            self._by_ino[node.ino] = node
            self._by_key[(subtree.id, dev, st_ino)] = node
            self._held += 1
            self._idle(node)
        elif node.fd < 0:
            if not node.orphan and not self._same_object(node, fd):
                node.generation += 1
                node.handle = None
                node.mount_fd = -1
                node.evictable = self._handleless.get(subtree.id) != dev
            node.fd = fd
            node.orphan = False
            self._held += 1
            self._idle(node)
        else:
            os.close(fd)
        if parent:
            node.parent, node.name = parent, name
            # Recently found: move to the end, so trimming takes the coldest first.
            del self._by_ino[node.ino]
            self._by_ino[node.ino] = node
        node.trimming = False
        node.lookups += 1
        node.found_at = time.monotonic()
        return node

    @staticmethod
    def _same_object(node: Node, fd: int) -> bool:
        """Is fd the object node held before its descriptor was closed? Without a handle
        (it was unlinked through the view, or its subtree dropped) assume a new one."""
        if node.handle is None:
            return False
        try:
            handle, _ = syscalls.name_to_handle_at(fd, b"", syscalls.AT_EMPTY_PATH)
        except OSError:
            return False
        return handle == node.handle

    def count_lookup(self, node: Node) -> None:
        """One more kernel reference to a node already in the table (readdirplus, root)."""
        node.trimming = False
        node.lookups += 1
        node.found_at = time.monotonic()

    # --- bounding memory and descriptors ------------------------------------------------------

    def over_budget(self) -> bool:
        """Should the kernel be asked to forget entries (cold_entries)?"""
        return (len(self._by_ino) > self.max_inodes
                or len(self._stuck) > self.max_stuck_fds)

    @staticmethod
    def _mark(node: Node, out: list[tuple[int, bytes]]) -> bool:
        if node.trimming or node.pins or node.is_root or not node.parent:
            return False
        node.trimming = True
        out.append((node.parent, node.name))
        return True

    def _pending(self) -> int:
        """How many entries the kernel was asked to drop in the last _TRIM_PENDING_S."""
        horizon = time.monotonic() - _TRIM_PENDING_S
        while self._asked and self._asked[0][0] < horizon:
            self._asked.popleft()
        return sum(n for _, n in self._asked)

    def cold_entries(self, batch: int) -> list[tuple[int, bytes]]:
        """(parent, name) of up to batch cold nodes when the table is over budget: stuck
        descriptors past max_stuck_fds first (they are what the kernel's forget frees), then
        the least recently found nodes past max_inodes. Asking the kernel to drop these
        entries makes it forget the inodes (SPEC 6). Entries asked for recently count as
        gone, so a burst of lookups before the forgets arrive does not empty the table."""
        out: list[tuple[int, bytes]] = []
        pending = self._pending()
        stuck_excess = len(self._stuck) - self.max_stuck_fds - pending
        if stuck_excess > 0:
            want = min(batch, stuck_excess)
            seen = list(islice(self._stuck.values(), 4 * want + 64))
            for node in seen:
                if len(out) >= want:
                    break
                self._mark(node, out)
            for node in seen:  # looked at: to the back, the next call starts on fresh ones
                self._stuck.move_to_end(node.ino)
        excess = len(self._by_ino) - self.max_inodes - pending - len(out)
        if excess <= 0 or len(out) >= batch:
            return self._asking(out)
        want = min(batch - len(out), excess)
        seen = []
        for node in self._by_ino.values():
            if want <= 0 or len(seen) >= 4 * want + 64:
                break
            seen.append(node)
            if self._mark(node, out):
                want -= 1
        for node in seen:
            del self._by_ino[node.ino]
            self._by_ino[node.ino] = node
        return self._asking(out)

    def _asking(self, out: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if out:
            self._asked.append((time.monotonic(), len(out)))
        return out

    def fd(self, node: Node) -> int:
        """A descriptor for node, re-opened from its handle if it was evicted.

        The descriptor stays valid until the next call into this table that could evict;
        use it at once, with no await in between. Raises OSError (ESTALE if the object is gone).
        """
        fd = node.fd
        if fd >= 0:
            if node.ino in self._lru:
                self._lru.move_to_end(node.ino)
            elif node.ino in self._stuck:
                self._stuck.move_to_end(node.ino)
            return fd
        if node.subtree.source is None:
            raise OSError(errno.ESTALE, "stale inode")
        if node.handle is None:
            if not node.orphan:
                raise OSError(errno.ESTALE, "stale inode")
            fd = self._reopen_orphan(node)
            self._idle(node)
            return fd
        mount_fd = node.mount_fd if node.mount_fd >= 0 else node.subtree.mount_fd()
        fd = syscalls.open_by_handle_at(mount_fd, node.handle, _REOPEN_FLAGS)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (node.dev, node.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "file handle names another object")
        node.fd = fd
        self._held += 1
        self._reopens += 1
        self._idle(node)
        return fd

    def _reopen_orphan(self, node: Node, depth: int = 0) -> int:
        """Open an orphan again by its name in its parent (see the module doc)."""
        parent = self._by_ino.get(node.parent)
        if parent is None or parent.subtree is not node.subtree or depth > 256:
            raise OSError(errno.ESTALE, "stale inode")
        if parent.fd >= 0 or not parent.orphan:
            parent_fd = self.fd(parent)
        else:
            parent_fd = self._reopen_orphan(parent, depth + 1)
            self._idle(parent)
        fd = os.open(node.name, _REOPEN_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (node.dev, node.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "the name holds another object now")
        node.fd = fd
        node.orphan = False
        self._held += 1
        self._reopens += 1
        return fd

    def pin(self, node: Node) -> None:
        node.pins += 1
        self._lru.pop(node.ino, None)
        self._stuck.pop(node.ino, None)

    def unpin(self, node: Node) -> None:
        assert node.pins > 0, node
        node.pins -= 1
        if node.pins == 0 and node.ino in self._by_ino:
            self._idle(node)

    def _idle(self, node: Node) -> None:
        if node.pins or node.is_root or node.fd < 0:
            return
        if node.subtree.detached:
            # Its last handle closed after a detach: like drop_subtree, nothing may reach
            # the source through it any more.
            os.close(node.fd)
            node.fd = -1
            node.handle = None
            node.orphan = False
            self._held -= 1
            return
        if node.evictable:
            self._lru[node.ino] = node
            self._lru.move_to_end(node.ino)
        else:
            self._stuck[node.ino] = node
            self._stuck.move_to_end(node.ino)
        # Stuck descriptors take their room from the evictable ones: idle descriptors stay
        # within max_cached_fds (the kernel's forgets bring the stuck ones back down).
        while self._lru and len(self._lru) + len(self._stuck) > self.max_cached_fds:
            _, victim = self._lru.popitem(last=False)
            self._evict(victim)
        while len(self._stuck) > 2 * self.max_stuck_fds:
            _, victim = self._stuck.popitem(last=False)
            if victim is node:  # the caller is about to use it
                self._stuck[node.ino] = node
                break
            os.close(victim.fd)
            victim.fd = -1
            victim.orphan = True
            self._held -= 1
            self._evictions += 1

    def _evict(self, node: Node) -> None:
        if node.handle is None:
            try:
                handle, mnt_id = syscalls.name_to_handle_at(node.fd, b"", syscalls.AT_EMPTY_PATH)
            except OSError:
                handle, mnt_id = b"", -1
            source = node.subtree.source
            mount_fd = -1
            if handle and source is not None and mnt_id != source.mnt_id:
                mount_fd = self._mount_fd_for(node, mnt_id)
            if not handle or source is None or (mnt_id != source.mnt_id and mount_fd < 0):
                # No handle (ramfs), or a nested mount we cannot re-open from: this one keeps
                # its descriptor until the kernel forgets it (see over_budget).
                node.evictable = False
                self._stuck[node.ino] = node
                return
            node.handle = handle
            node.mount_fd = mount_fd
        os.close(node.fd)
        node.fd = -1
        self._held -= 1
        self._evictions += 1

    def _mount_fd_for(self, node: Node, mnt_id: int) -> int:
        """A non-O_PATH descriptor on mount mnt_id (a mount nested in node's source) that
        open_by_handle_at accepts, or -1. Opened from node itself or its parent, whichever
        is a directory on that mount; one per mount, at most MAX_MOUNT_FDS in all."""
        sid = node.subtree.id
        found = self._mount_fds.get((sid, mnt_id))
        if found is not None:
            return found
        if len(self._mount_fds) >= MAX_MOUNT_FDS:
            return -1
        parent = self._by_ino.get(node.parent)
        for candidate in (node, parent):
            if candidate is None or candidate.fd < 0 or candidate.subtree is not node.subtree:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(candidate.fd).st_mode):
                    continue
                if candidate is not node and syscalls.name_to_handle_at(
                        candidate.fd, b"", syscalls.AT_EMPTY_PATH)[1] != mnt_id:
                    continue
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                             dir_fd=candidate.fd)
            except OSError:
                continue
            self._mount_fds[(sid, mnt_id)] = fd
            return fd
        return -1

    def release_fd(self, node: Node) -> None:
        """Close an idle node's descriptor for good (its object was unlinked): later uses
        answer ESTALE. Pinned nodes keep theirs until their last handle closes."""
        if node.pins or node.is_root:
            return
        node.orphan = False  # its name is gone: never re-open by it
        if node.fd < 0:
            return
        self._lru.pop(node.ino, None)
        self._stuck.pop(node.ino, None)
        os.close(node.fd)
        node.fd = -1
        node.handle = None
        node.orphan = False
        self._held -= 1

    def forget(self, ino: int, nlookup: int) -> None:
        node = self._by_ino.get(ino)
        if node is None:
            log.error("forget of unknown inode %d", ino)
            return
        if nlookup > node.lookups:
            log.error("forget(%d, %d) exceeds lookup count %d", ino, nlookup, node.lookups)
            nlookup = node.lookups
        node.lookups -= nlookup
        if node.lookups == 0:
            self._drop_if_unused(node)

    def _drop_if_unused(self, node: Node) -> None:
        if node.lookups or node.pins:
            return
        if node.is_root and not node.subtree.detached:
            return
        self._by_ino.pop(node.ino, None)
        self._by_key.pop((node.subtree.id, node.dev, node.st_ino), None)
        self._lru.pop(node.ino, None)
        self._stuck.pop(node.ino, None)
        if node.fd >= 0 and not node.is_root:
            os.close(node.fd)
            self._held -= 1
        node.fd = -1

    def drop_subtree(self, subtree: LiveSubtree) -> None:
        """After a detach: close idle descriptors of the subtree now, keep what is pinned.

        Nodes stay in the table (the kernel may still hold them) but without descriptors, so
        every later use fails with ESTALE once the source is closed.
        """
        for node in self.nodes_of(subtree):
            self._lru.pop(node.ino, None)
            self._stuck.pop(node.ino, None)
            if node.pins:
                continue
            if node.fd >= 0 and not node.is_root:
                os.close(node.fd)
                self._held -= 1
            node.fd = -1
            node.handle = None
            node.orphan = False
            if node.lookups == 0:
                self._drop_if_unused(node)
        for key in [k for k in self._mount_fds if k[0] == subtree.id]:
            os.close(self._mount_fds.pop(key))
        for key in [k for k in self._dev_keys if k[0] == subtree.id]:
            del self._dev_keys[key]
        self._handleless.pop(subtree.id, None)

    def close_all(self) -> None:
        for node in list(self._by_ino.values()):
            if node.fd >= 0 and not node.is_root:
                os.close(node.fd)
            node.fd = -1
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()
        self._dev_keys.clear()
        self._handleless.clear()
        self._by_ino.clear()
        self._by_key.clear()
        self._lru.clear()
        self._stuck.clear()
        self._held = 0
        self._asked.clear()
