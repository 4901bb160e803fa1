"""The subtree table: names, holders, caps (SPEC 4 and 6). Pure: no os, pyfuse3 or trio.

The table only decides and records. Opening sources, persisting and invalidating caches
happen around it (fusemount.control), in that order: check here, act, then commit here.
Because every method is plain `def`, a check and its commit run without a task switch in
between when the caller does no `await` between them (trio is single-threaded).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator

from fusemount.core.records import (
    ControlError,
    Identity,
    Limits,
    SubtreeId,
    SubtreeSpec,
)


def same_source(a: Identity | None, b: Identity | None) -> bool:
    """Same backing object: (dev, ino) is the identity the SPEC names (SPEC 8)."""
    return a is not None and b is not None and (a.dev, a.ino) == (b.dev, b.ino)


class SubtreeTable:
    """Subtree specs by name. Ids are never reused, so a re-attached name is a new subtree."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_name: dict[str, tuple[SubtreeId, SubtreeSpec]] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[tuple[SubtreeId, SubtreeSpec]]:
        return iter(sorted(self._by_name.values(), key=lambda item: item[1].name))

    def get(self, name: str) -> tuple[SubtreeId, SubtreeSpec] | None:
        return self._by_name.get(name)

    def require(self, name: str) -> tuple[SubtreeId, SubtreeSpec]:
        found = self._by_name.get(name)
        if found is None:
            raise ControlError(errno.ENOENT, f"no such subtree: {name}")
        return found

    def specs(self) -> list[SubtreeSpec]:
        return [spec for _, spec in self]

    def owned_by(self, uid: int) -> int:
        return sum(1 for _, spec in self._by_name.values() if spec.policy.owner == uid)

    def check_room(self, owner: int, per_user_cap_applies: bool) -> None:
        """Raise ENOSPC/EDQUOT if one more subtree would cross a cap (SPEC 6)."""
        if len(self._by_name) >= self.limits.max_subtrees:
            raise ControlError(
                errno.ENOSPC,
                f"subtree limit reached (max_subtrees={self.limits.max_subtrees})",
            )
        cap = self.limits.max_subtrees_per_user
        if per_user_cap_applies and self.owned_by(owner) >= cap:
            raise ControlError(
                errno.EDQUOT,
                f"per-user subtree limit reached (max_subtrees_per_user={cap})",
            )

    def check_holder_room(self, spec: SubtreeSpec, holder: str) -> None:
        if holder in spec.holders:
            return
        if len(spec.holders) >= self.limits.max_holders:
            raise ControlError(
                errno.ENOSPC,
                f"holder limit reached for {spec.name} (max_holders={self.limits.max_holders})",
            )

    def add(self, spec: SubtreeSpec) -> SubtreeId:
        assert spec.name not in self._by_name, spec.name
        sid = SubtreeId(self._next_id)
        self._next_id += 1
        self._by_name[spec.name] = (sid, spec)
        return sid

    def replace(self, spec: SubtreeSpec) -> None:
        sid, _ = self.require(spec.name)
        self._by_name[spec.name] = (sid, spec)

    def remove(self, name: str) -> SubtreeSpec:
        _, spec = self._by_name.pop(name)
        return spec


def with_holder(spec: SubtreeSpec, holder: str) -> SubtreeSpec:
    if holder in spec.holders:
        return spec
    return dataclasses.replace(spec, holders=(*spec.holders, holder))


def without_holder(spec: SubtreeSpec, holder: str) -> SubtreeSpec:
    if holder not in spec.holders:
        raise ControlError(errno.ENOENT, f"no such holder on {spec.name}: {holder}")
    return dataclasses.replace(spec, holders=tuple(h for h in spec.holders if h != holder))
