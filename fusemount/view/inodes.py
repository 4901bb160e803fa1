"""Kernel inode numbers <-> backing objects held by descriptor; lookup counts; forget.

How this works: a Node is one backing object as seen through one subtree, keyed
(subtree id, st_dev, st_ino), so a file reachable from two subtrees with different
grants is two kernel inodes. Kernel inode numbers come from a counter, never from
st_ino, and are never reused. A node holds an O_PATH descriptor while it is in use;
to keep the daemon's descriptors bounded whatever the kernel caches (SPEC 6), idle
descriptors sit in an LRU of at most `max_cached_fds` and the oldest is closed after
minting a file handle for it (name_to_handle_at); the next use re-opens it with
open_by_handle_at on the subtree's own detached mount, so it can only ever reach the
object it was minted from. Objects on filesystems without file handles, or on a mount
nested inside the source, keep their descriptor until the kernel forgets them.

Memory is bounded the same way from the other side: past `max_inodes` known objects,
cold_entries() names the least recently found ones by where the kernel found them
(parent inode, name), and the caller asks the kernel to drop those entries; the kernel
then forgets the inodes. Entries in use (a cwd, an open file) stay, so the table can
exceed the cap by what is in use.

Invariants: `lookups` changes only in adopt() and forget(); a node leaves the tables
exactly when its lookup count reaches zero (subtree roots: when also detached).
Every method is plain `def`: with trio, "find the node, bump its count" is one step.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

from fusemount.core.records import SubtreeId
from fusemount.host import syscalls
from fusemount.view.live import LiveSubtree

log = logging.getLogger(__name__)

FIRST_DYNAMIC_INO = 1000
_REOPEN_FLAGS = os.O_PATH | os.O_CLOEXEC


@dataclass(slots=True, eq=False)
class Node:
    ino: int
    subtree: LiveSubtree
    dev: int
    st_ino: int
    fd: int  # -1 while evicted; owned by the node unless is_root
    lookups: int = 0  # changed only by InodeTable.adopt() and forget()
    pins: int = 0  # open handles on this node: never evicted while > 0
    handle: bytes | None = None
    evictable: bool = True
    is_root: bool = False
    # Where the kernel last found it: a hint for asking the kernel to forget it when the
    # table is over max_inodes (invalidate_entry), never used to resolve anything.
    parent: int = 0
    name: bytes = b""
    trimming: bool = False  # an invalidation was requested; waiting for the forget


@dataclass(frozen=True, slots=True)
class InodeStats:
    nodes: int
    held_fds: int
    cached_fds: int
    evictions: int
    reopens: int


class InodeTable:
    def __init__(self, max_cached_fds: int, max_inodes: int = 1 << 62) -> None:
        self.max_cached_fds = max_cached_fds
        self.max_inodes = max_inodes
        self._by_ino: dict[int, Node] = {}
        self._by_key: dict[tuple[SubtreeId, int, int], Node] = {}
        self._lru: OrderedDict[int, Node] = OrderedDict()  # idle nodes holding an fd
        self._next_ino = FIRST_DYNAMIC_INO
        self._held = 0  # descriptors owned by nodes
        self._evictions = 0
        self._reopens = 0

    def __len__(self) -> int:
        return len(self._by_ino)

    def statistics(self) -> InodeStats:
        return InodeStats(len(self._by_ino), self._held, len(self._lru),
                          self._evictions, self._reopens)

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def node(self, ino: int) -> Node:
        found = self._by_ino.get(ino)
        if found is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return found

    def nodes_of(self, subtree: LiveSubtree) -> list[Node]:
        return [n for n in self._by_ino.values() if n.subtree is subtree]

    def _new_ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def add_root(self, subtree: LiveSubtree) -> Node:
        """The node of a subtree's root; its descriptor belongs to the subtree's source."""
        assert subtree.source is not None
        st = os.fstat(subtree.source.root_fd)
        node = Node(self._new_ino(), subtree, st.st_dev, st.st_ino, subtree.source.root_fd,
                    evictable=False, is_root=True)
        self._by_ino[node.ino] = node
        self._by_key[(subtree.id, node.dev, node.st_ino)] = node
        subtree.root_ino = node.ino
        return node

    def find(self, subtree: LiveSubtree, dev: int, st_ino: int) -> Node | None:
        return self._by_key.get((subtree.id, dev, st_ino))

    def adopt(self, subtree: LiveSubtree, fd: int, dev: int, st_ino: int,
              parent: int = 0, name: bytes = b"") -> Node:
        """Take ownership of fd (an O_PATH descriptor of dev/st_ino) and count one lookup.

        If the object is already known, fd is closed (or revives an evicted node). parent and
        name record where the kernel found it (see Node.parent).
        """
        node = self._by_key.get((subtree.id, dev, st_ino))
        if node is None:
            node = Node(self._new_ino(), subtree, dev, st_ino, fd, parent=parent, name=name)
            self._by_ino[node.ino] = node
            self._by_key[(subtree.id, dev, st_ino)] = node
            self._held += 1
            self._idle(node)
        elif node.fd < 0:
            node.fd = fd
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
        return node

    def cold_entries(self, batch: int) -> list[tuple[int, bytes]]:
        """(parent, name) of up to batch of the least recently found nodes, when the table
        holds more than max_inodes: asking the kernel to drop these entries makes it forget
        the inodes, which is what keeps the daemon's memory bounded (SPEC 6)."""
        excess = len(self._by_ino) - self.max_inodes
        if excess <= 0:
            return []
        want = min(batch, excess)
        out: list[tuple[int, bytes]] = []
        seen: list[Node] = []
        for node in self._by_ino.values():
            if len(out) >= want or len(seen) >= 4 * want + 64:
                break
            seen.append(node)
            if node.trimming or node.pins or node.is_root or not node.parent:
                continue
            node.trimming = True
            out.append((node.parent, node.name))
        # Everything looked at goes to the back, so the next call starts on fresh cold nodes
        # instead of rescanning ones still waiting for their forget (or in use).
        for node in seen:
            del self._by_ino[node.ino]
            self._by_ino[node.ino] = node
        return out

    def count_lookup(self, node: Node) -> None:
        """One more kernel reference to a node already in the table (readdirplus, root)."""
        node.trimming = False
        node.lookups += 1

    def fd(self, node: Node) -> int:
        """A descriptor for node, re-opened from its handle if it was evicted.

        The descriptor stays valid until the next call into this table that could evict;
        use it at once, with no await in between. Raises OSError (ESTALE if the object is gone).
        """
        fd = node.fd
        if fd >= 0:
            if node.ino in self._lru:
                self._lru.move_to_end(node.ino)
            return fd
        if node.handle is None or node.subtree.source is None:
            raise OSError(errno.ESTALE, "stale inode")
        fd = syscalls.open_by_handle_at(node.subtree.mount_fd(), node.handle, _REOPEN_FLAGS)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (node.dev, node.st_ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "file handle names another object")
        node.fd = fd
        self._held += 1
        self._reopens += 1
        self._idle(node)
        return fd

    def pin(self, node: Node) -> None:
        node.pins += 1
        self._lru.pop(node.ino, None)

    def unpin(self, node: Node) -> None:
        assert node.pins > 0, node
        node.pins -= 1
        if node.pins == 0 and node.ino in self._by_ino:
            self._idle(node)

    def _idle(self, node: Node) -> None:
        if node.pins or not node.evictable or node.fd < 0:
            return
        self._lru[node.ino] = node
        self._lru.move_to_end(node.ino)
        while len(self._lru) > self.max_cached_fds:
            _, victim = self._lru.popitem(last=False)
            self._evict(victim)

    def _evict(self, node: Node) -> None:
        if node.handle is None:
            try:
                handle, mnt_id = syscalls.name_to_handle_at(node.fd, b"", syscalls.AT_EMPTY_PATH)
            except OSError:
                handle, mnt_id = b"", -1
            source = node.subtree.source
            if not handle or source is None or mnt_id != source.mnt_id:
                # No handle, or a mount nested in the source: this one keeps its descriptor.
                node.evictable = False
                return
            node.handle = handle
        os.close(node.fd)
        node.fd = -1
        self._held -= 1
        self._evictions += 1

    def release_fd(self, node: Node) -> None:
        """Close an idle node's descriptor for good (its object was unlinked): later uses
        answer ESTALE. Pinned nodes keep theirs until their last handle closes."""
        if node.pins or node.is_root or node.fd < 0:
            return
        self._lru.pop(node.ino, None)
        os.close(node.fd)
        node.fd = -1
        node.handle = None
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
            if node.pins:
                continue
            if node.fd >= 0 and not node.is_root:
                os.close(node.fd)
                self._held -= 1
            node.fd = -1
            node.handle = None
            if node.lookups == 0:
                self._drop_if_unused(node)

    def close_all(self) -> None:
        for node in list(self._by_ino.values()):
            if node.fd >= 0 and not node.is_root:
                os.close(node.fd)
            node.fd = -1
        self._by_ino.clear()
        self._by_key.clear()
        self._lru.clear()
        self._held = 0
