"""One record of VIEW/.fusemount/mounts.json: what the view renders and the client parses
(SPEC 4 "mounts", SPEC 8; issue 16 item 5).

The view builds a MountRecord per subtree the reader may see and writes `to_json()`; the
client reads each object back with `from_json()`. Only name is required on reading; keys the
daemon does not send take the defaults below and keys this record does not know are ignored,
so old clients read new daemons and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class MountRecord:
    """One subtree as the reader sees it."""

    name: str
    kind: str = "attach"  # "attach" | "mount"
    source: str = ""
    state: str = "attached"  # "attached" | "failed"
    reason: str = ""  # why state is "failed"
    ro: bool = False
    owner: int | None = None
    allow: tuple[str, ...] = ()  # as rendered by the daemon: "1001:ro", "@1002:rw", "*:ro"
    holders: tuple[str, ...] = ()
    squash: str = "none"  # "root" | "none"
    expire: float = 0.0  # idle seconds before an automatic detach; 0 = never
    dev: int | None = None  # None: the source identity is unknown (a failed subtree)
    ino: int | None = None
    mount_id: int | None = None
    fstype: str = ""
    open_files: int = 0
    access: str = "ro"  # what the reader may do: "none" (admins see all) | "ro" | "rw"
    health: str = "ok"  # "ok" | "stalled" | "failed"
    options: str | None = None  # a mount's filesystem options; None for an attach

    def to_json(self) -> dict[str, object]:
        """The object as mounts.json carries it (options only for a mount)."""
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "state": self.state,
            "reason": self.reason,
            "ro": self.ro,
            "owner": self.owner,
            "allow": list(self.allow),
            "holders": list(self.holders),
            "squash": self.squash,
            "expire": self.expire,
            "dev": self.dev,
            "ino": self.ino,
            "mount_id": self.mount_id,
            "fstype": self.fstype,
            "open_files": self.open_files,
            "access": self.access,
            "health": self.health,
        }
        if self.options is not None:
            out["options"] = self.options
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> MountRecord:
        """Build from one decoded object; ValueError names the first key of a wrong type."""
        d = _DEFAULT
        options = obj.get("options")
        return cls(
            name=_field(obj, "name", str, None),
            kind=_field(obj, "kind", str, d.kind),
            source=_field(obj, "source", str, d.source),
            state=_field(obj, "state", str, d.state),
            reason=_field(obj, "reason", str, d.reason),
            ro=_field(obj, "ro", bool, d.ro),
            owner=_optional_int(obj, "owner"),
            allow=_strings(obj, "allow"),
            holders=_strings(obj, "holders"),
            squash=_field(obj, "squash", str, d.squash),
            expire=_seconds(obj, "expire"),
            dev=_optional_int(obj, "dev"),
            ino=_optional_int(obj, "ino"),
            mount_id=_optional_int(obj, "mount_id"),
            fstype=_field(obj, "fstype", str, d.fstype),
            open_files=_field(obj, "open_files", int, d.open_files),
            access=_field(obj, "access", str, d.access),
            health=_field(obj, "health", str, d.health),
            options=None if options is None else _field(obj, "options", str, None),
        )


_DEFAULT = MountRecord(name="")


def _field(obj: Mapping[str, object], key: str, type_: type[_T], default: _T | None) -> _T:
    value = obj.get(key)
    if value is None:
        # null is read as absent: a daemon may well send null for "not applicable"
        if default is None:
            raise ValueError(f"missing key {key!r}")
        return default
    # bool is an int to isinstance(), never to us: `"open_files": true` is malformed
    if not isinstance(value, type_) or (type_ is not bool and isinstance(value, bool)):
        raise ValueError(f"key {key!r} should be {type_.__name__}, got {value!r:.60}")
    return value


def _optional_int(obj: Mapping[str, object], key: str) -> int | None:
    return None if obj.get(key) is None else _field(obj, key, int, None)


def _seconds(obj: Mapping[str, object], key: str) -> float:
    value = obj.get(key)
    if value is None:
        return _DEFAULT.expire
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"key {key!r} should be a number, got {value!r:.60}")
    return value


def _strings(obj: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"key {key!r} should be a list of strings, got {value!r:.60}")
    return tuple(value)
