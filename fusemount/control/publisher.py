"""What control needs from the view that serves its table (issue 16 item 1).

Control decides and persists; the view publishes. Control depends only on these two
protocols, which the view implements (view/context.py, view/registry.py) and the daemon
passes in by constructor, so no control module imports the view.
"""

from __future__ import annotations

from typing import Protocol

from fusemount.core.policy import Rules
from fusemount.core.records import Access, Caller, Config, SubtreeId, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable
from fusemount.host.sources import OpenedSource, ViewGuard


class Context(Protocol):
    """The table and the rules a command is decided by (re-read each time: SIGHUP replaces
    config and rules)."""

    @property
    def config(self) -> Config: ...
    @property
    def rules(self) -> Rules: ...
    @property
    def table(self) -> SubtreeTable: ...
    @property
    def view_guard(self) -> ViewGuard | None: ...
    def access(self, caller: Caller, spec: SubtreeSpec) -> Access: ...
    def with_groups(self, caller: Caller) -> Caller: ...


class Publisher(Protocol):
    """The attached subtrees as the view serves them. Each call follows a commit to the
    table (and a durable save); kernel caches are dropped at flush()."""

    def publish(self, sid: SubtreeId, spec: SubtreeSpec, opened: OpenedSource) -> None:
        """Serve a newly committed subtree under spec.name."""

    def republish(self, spec: SubtreeSpec, *, drop_caches: bool) -> None:
        """A served subtree's spec changed (policy, holders); with drop_caches (a policy
        change) what the kernel cached for it goes at flush()."""

    def unpublish(self, name: str) -> None:
        """The name vanishes now; the source closes after its last open file."""

    def open_files(self, name: str) -> int:
        """Open files and directories under a served subtree (0 if not served)."""

    def source(self, name: str) -> OpenedSource | None:
        """A served subtree's pinned source, None if not served."""

    async def flush(self) -> None:
        """Make the kernel forget what it cached for every subtree changed since."""
