"""The registry of attached subtrees: the one place a subtree enters and leaves the view
(issue 16 item 1; SPEC 4 attach and detach, SPEC 8 restart).

Control commits to the table and saves the state file, then tells the registry (it
implements control/publisher.py's Publisher); the daemon uses it to reap, invalidate and
shut down. A subtree's end of life is here alone: unpublish takes its name away, and its
descriptors are released by _retire, at once if nothing is open, otherwise by reap() after
the last open file is closed (HandleTable.on_last_close), or by close_all() at shutdown.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

from fusemount.core.records import Kind, SubtreeId, SubtreeSpec
from fusemount.host.sources import OpenedSource
from fusemount.view.context import ViewContext
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import may_stall

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, ctx: ViewContext) -> None:
        self.ctx = ctx
        self._pending: list[LiveSubtree] = []  # subtrees whose kernel caches must go

    # --- Publisher (control/publisher.py) ---------------------------------------------------

    def publish(self, sid: SubtreeId, spec: SubtreeSpec, opened: OpenedSource) -> None:
        live = LiveSubtree(sid, spec, opened)
        live.offload = spec.kind is Kind.ATTACH and may_stall(opened.identity.fstype)
        self.ctx.inodes.add_root(live)
        self.ctx.live[spec.name] = live

    def republish(self, spec: SubtreeSpec, *, drop_caches: bool) -> None:
        live = self.ctx.live.get(spec.name)
        if live is not None:
            live.spec = spec
            if drop_caches:
                self._pending.append(live)

    def unpublish(self, name: str) -> None:
        live = self.ctx.live.pop(name, None)
        if live is None:
            return
        live.detached = True
        if live.open_files == 0:
            self._retire(live)
        else:
            self.ctx.inodes.drop_subtree(live)  # idle descriptors now, the rest at reap()
        self._pending.append(live)

    def open_files(self, name: str) -> int:
        live = self.ctx.live.get(name)
        return 0 if live is None else live.open_files

    def source(self, name: str) -> OpenedSource | None:
        live = self.ctx.live.get(name)
        return None if live is None else live.source

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for subtree in pending:
            await self.invalidate(subtree)

    # --- the daemon's side ------------------------------------------------------------------

    def reap(self) -> None:
        """Close the sources of force-detached subtrees whose last open file is gone."""
        while self.ctx.handles.on_last_close:
            subtree = self.ctx.handles.on_last_close.pop()
            self._retire(subtree)
            log.info("subtree %s: last open file closed, source released", subtree.name)

    def close_all(self) -> None:
        """At shutdown, after the FUSE loop ended: every handle, inode and source."""
        self.ctx.handles.close_all()
        self.ctx.inodes.close_all()
        for live in list(self.ctx.live.values()):
            live.close()
        self.ctx.live.clear()

    async def invalidate_all(self) -> None:
        """Grants or admins may have changed (SIGHUP): nothing cached may outlive them."""
        for live in list(self.ctx.live.values()):
            await self.invalidate(live)

    def _retire(self, subtree: LiveSubtree) -> None:
        self.ctx.inodes.drop_subtree(subtree)
        subtree.close()

    async def invalidate(self, subtree: LiveSubtree) -> None:
        """Make the kernel forget what it cached for a subtree (policy change or detach).

        Attributes of every inode (for the gate, its ACL too: invalidate_inode drops the
        cached ACL), so the next permission check asks again. The name itself only when it
        may no longer resolve: a detach, or hidden names; a `set` in gate mode keeps the
        entry, so working directories inside stay valid (dropping a directory's dentry
        unhashes it under every process whose cwd it is).

        The notify calls block until the kernel has processed them, and the kernel may need
        an answer from us to do so: they run in a worker thread while trio keeps serving.
        """
        if not self.ctx.mounted:
            return
        inos = [n.ino for n in self.ctx.inodes.nodes_of(subtree)]
        drop_name = not (subtree.live and self.ctx.gated)

        name = pyfuse3.FileNameT(subtree.name.encode())

        def run() -> None:
            # Synchronous, so the name is gone from the kernel's cache before the command
            # replies, and no queued notification can outlive the session at shutdown.
            try:
                if drop_name:
                    pyfuse3.invalidate_entry(pyfuse3.ROOT_INODE, name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("invalidate_entry(%s): %s", subtree.name, exc)
            for ino in inos:
                try:
                    pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=False)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:  # ENOENT: the kernel had already forgotten
                        log.warning("invalidate_inode(%d): %s", ino, exc)

        await trio.to_thread.run_sync(run)
