"""Frozen records that every layer shares. Pure data: no os, pyfuse3 or trio here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

SubtreeId = NewType("SubtreeId", int)


class ControlError(OSError):
    """A refused control command: errno and message travel to the JSON reply (SPEC 4)."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(errno_, message)
        self.message = message


class Access(enum.IntEnum):
    """What a caller may do in a subtree; ordered so max() picks the widest grant."""

    NONE = 0
    RO = 1
    RW = 2


class Kind(enum.Enum):
    """How the source of a subtree came to be (SPEC 4: attach or mount)."""

    ATTACH = "attach"
    MOUNT = "mount"


class State(enum.Enum):
    """A subtree is live, or listed but not attached after a failed restart check (SPEC 8)."""

    ATTACHED = "attached"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request. groups are the supplementary groups, primary gid excluded."""

    uid: int
    gid: int
    pid: int
    umask: int = 0o022
    groups: frozenset[int] = frozenset()

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """An `allow=` entry as written: principal is a name, a number or `*` (not yet resolved)."""

    principal: str
    is_group: bool
    access: Access


@dataclass(frozen=True, slots=True)
class Grant:
    """A resolved grant: uid or gid number, or everyone (`*`, which may only be RO)."""

    kind: GrantKind
    id: int
    access: Access

    def render(self) -> str:
        suffix = "ro" if self.access is Access.RO else "rw"
        if self.kind is GrantKind.EVERYONE:
            return f"*:{suffix}"
        prefix = "@" if self.kind is GrantKind.GROUP else ""
        return f"{prefix}{self.id}:{suffix}"


class GrantKind(enum.Enum):
    USER = "user"
    GROUP = "group"
    EVERYONE = "everyone"


@dataclass(frozen=True, slots=True)
class Identity:
    """What a source was when it was checked: compared again on every restart (SPEC 8)."""

    dev: int
    ino: int
    mount_id: int
    fstype: str


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may use a subtree (SPEC 5). owner and admins are always RW."""

    owner: int
    grants: tuple[Grant, ...] = ()
    ro: bool = False
    squash_root: bool = False


@dataclass(frozen=True, slots=True)
class SubtreeSpec:
    """Everything needed to re-create a subtree: what the state file stores (SPEC 8)."""

    name: str
    kind: Kind
    source: str
    identity: Identity | None
    policy: Policy
    fstype: str = ""  # mount only: the filesystem type asked for
    options: str = ""  # mount only: the OPTS string asked for
    holders: tuple[str, ...] = ()
    created_with_holder: bool = False  # auto-detach on last release only if True (SPEC 4)
    expire_s: float = 0.0  # 0 = never
    state: State = State.ATTACHED
    reason: str = ""  # why state is FAILED
    declared: bool = False  # kept by a [[subtree]] table of the config, reconciled on reload


@dataclass(frozen=True, slots=True)
class Limits:
    """SPEC 6 caps. Every one is a config key; the errno for each is fixed by the SPEC."""

    max_subtrees: int = 64
    max_subtrees_per_user: int = 8
    max_holders: int = 1024
    max_open_files: int = 4096
    max_open_files_per_user: int = 1024  # per non-admin uid (EMFILE)
    max_command_bytes: int = 4096
    max_cached_fds: int = 8192  # descriptors kept for inodes the kernel knows (beyond SPEC 6)
    max_inodes: int = 262144  # inodes known before the kernel is asked to forget cold ones
    request_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AccessConfig:
    admins: tuple[str, ...] = ("root", "@fusemount")
    self_service: bool = False
    self_service_roots: tuple[str, ...] = ()
    source_roots: tuple[str, ...] = ()
    fstypes: tuple[str, ...] = ()
    require_mountpoint: bool = False
    mount_fstypes: tuple[str, ...] = ("tmpfs", "ext4", "xfs", "btrfs", "squashfs", "erofs")
    deny_special_files: bool = False  # SPEC 3: no device nodes, no set-ID bits on files
    hide_names: bool = False  # True: outsiders get ENOENT for VIEW/NAME, not the gate (SPEC 5)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    entry_timeout: float = 1.0
    attr_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class PerformanceConfig:
    busy_poll: bool = False  # opt-in: idle CPUs poll while the view is busy (view/busypoll.py)
    # After each reply the daemon's own thread polls /dev/fuse this long for the next request
    # (adaptive: it stops while spins find nothing). 0: never. Costs only this process's CPU.
    spin_us: int = 50


@dataclass(frozen=True, slots=True)
class LogConfig:
    audit: str = ""  # "" = with the daemon log (foreground); a per-view file when detached
    level: str = "info"  # debug, info, warning, error
    target: str = "auto"  # auto (stderr, or syslog when detached), stderr, syslog, file
    file: str = ""  # target = "file": "" = /var/log/fusemount/<view>.log
    syslog_socket: str = "/dev/log"


@dataclass(frozen=True, slots=True)
class SubtreeDecl:
    """A `[[subtree]]` table of the config: a subtree the daemon keeps attached (issue 15).

    Validated like the ctl command it stands for; fstype set means `mount`, else `attach`.
    owner "" means root; allow holds `allow=` entries as written.
    """

    name: str
    source: str
    fstype: str = ""
    options: str = ""
    ro: bool = False
    owner: str = ""
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    access: AccessConfig = field(default_factory=AccessConfig)
    limits: Limits = field(default_factory=Limits)
    cache: CacheConfig = field(default_factory=CacheConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    subtrees: tuple[SubtreeDecl, ...] = ()  # [[subtree]] tables, in file order
