"""The state file: the subtree table on disk, replaced atomically and durably (SPEC 8).

How this works: `save()` writes the whole table to a fresh temporary file in the
same directory, fsyncs it, renames it over the state file and fsyncs the
directory, so a crash at any instant leaves either the old or the new table.
`load()` reads one file, upgrades older formats through `_MIGRATIONS` and checks
every field before building a single record.

Never: pickle or eval anything; return an empty table for a file that exists but
cannot be understood (that would silently forget every subtree); delete or
overwrite a file it could not read (a copy is set aside for the operator).
Known gap: a temporary file left by a crash between write and rename stays in
the directory (named `.<state>.tmp-*`); it is never read and costs one file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeVar

from fusemount.core.protocol import HOLDER_RE, NAME_RE
from fusemount.core.records import (
    Access,
    Grant,
    GrantKind,
    Identity,
    Kind,
    Policy,
    State,
    SubtreeSpec,
)
from fusemount.host import daemonfiles

FORMAT_NAME = "fusemount-state"
CURRENT_VERSION = 1

# The state file is ours, but it may be hand-edited or restored from a backup:
# a name or holder that the control language could never have produced is refused
# rather than handed to the daemon (SPEC 3 names, SPEC 4 holders): the protocol's own
# NAME_RE and HOLDER_RE decide.

_E = TypeVar("_E", Kind, State, GrantKind)


class StateError(Exception):
    """The state file cannot be read, understood or written; the message is one line.

    errno is set when an OSError was the cause (disk full, permission), else None.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno_


class _Invalid(Exception):
    """A document that parses as JSON but is not a state table; message names the field."""


def _migrate_v0(doc: object) -> object:
    # Version 0 was a bare JSON list of subtrees, without the envelope.
    return {"format": FORMAT_NAME, "version": 1, "subtrees": doc}


# version N -> a function turning a version-N document into a version-N+1 document.
# Applied in order on load; a new format adds one entry and bumps CURRENT_VERSION.
_MIGRATIONS: dict[int, Callable[[object], object]] = {
    0: _migrate_v0,
}


class StateStore:
    """Reads and writes the subtree table at one path. Every call blocks (file I/O, fsync)."""

    def __init__(self, path: str) -> None:
        # No default: the default state file is per view (SPEC 8, daemonfiles), never shared.
        if not path:
            raise ValueError("state file path is empty")
        self.path = os.path.abspath(path)
        self._dir = os.path.dirname(self.path)

    def load(self) -> list[SubtreeSpec]:
        """Return the stored table; [] only when the file does not exist (first run).

        Raises StateError for an unreadable, corrupt or invalid file (a copy is set
        aside as `<path>.corrupt-<UTC time>` first) and for a version newer than ours.
        """
        self._ensure_dir()
        try:
            fd = daemonfiles.open_own(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        except daemonfiles.UnsafeFile as exc:
            # A symlink or a file others may write could hand us a forged table (SPEC 8).
            dangling = " (dangling symlink)" if not os.path.exists(self.path) else ""
            raise StateError(f"state file {exc.strerror}{dangling}", exc.errno) from None
        except OSError as exc:
            raise StateError(
                f"state file {self.path}: cannot read: {exc.strerror}", exc.errno
            ) from exc
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise StateError(
                f"state file {self.path}: cannot read: {exc.strerror}", exc.errno
            ) from exc
        try:
            doc = _parse_json(raw)
            version, doc = _envelope_version(doc)
        except _Invalid as exc:
            self._refuse_corrupt(raw, str(exc))
        if version > CURRENT_VERSION:
            raise StateError(
                f"state file {self.path}: format version {version} is newer than this "
                f"fusemount understands ({CURRENT_VERSION}); refusing to load it"
            )
        try:
            while version < CURRENT_VERSION:
                migrate = _MIGRATIONS.get(version)
                if migrate is None:
                    raise _Invalid(f"no migration from format version {version}")
                next_version, doc = _envelope_version(migrate(doc))
                # A migration that does not advance by one would loop or skip a step.
                assert next_version == version + 1, (version, next_version)
                version = next_version
            return _decode_table(doc)
        except _Invalid as exc:
            self._refuse_corrupt(raw, str(exc))

    def save(self, specs: Sequence[SubtreeSpec]) -> None:
        """Replace the stored table with specs, atomically and durably.

        On return the new table is on disk. Raises StateError (errno set) on any
        I/O failure, after which the old file is untouched and no temporary file
        remains; ValueError if two specs share a name.
        """
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError("state table has duplicate subtree names")
        doc = {
            "format": FORMAT_NAME,
            "version": CURRENT_VERSION,
            "subtrees": [_encode_spec(spec) for spec in specs],
        }
        data = (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8")
        try:
            self._ensure_dir()
            self._replace(data)
        except OSError as exc:
            raise StateError(
                f"state file {self.path}: cannot save: {exc.strerror or exc}", exc.errno
            ) from exc

    def _replace(self, data: bytes) -> None:
        tmp = os.path.join(self._dir, f".{os.path.basename(self.path)}.tmp-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        renamed = False
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            renamed = True
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _ensure_dir(self) -> None:
        try:
            # The table names every source: 0700 for each level made (SPEC 8).
            daemonfiles.make_dirs(self._dir, 0o700)
        except daemonfiles.UnsafeFile as exc:
            raise StateError(f"state directory: {exc.strerror}", exc.errno) from None
        except OSError as exc:
            raise StateError(
                f"state directory {self._dir}: cannot create: {exc.strerror}", exc.errno
            ) from exc

    def lock(self, view: str) -> int:
        """Lock the state file for this process's life (SPEC 8: one daemon per state file).

        Returns the lock file's descriptor: keep it open, never close another descriptor of
        that file. Raises StateError naming the holder (pid and view) if another has it.
        """
        self._ensure_dir()
        path = self.path + ".lock"
        try:
            fd = daemonfiles.open_own(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"state lock {path}: {exc.strerror}", exc.errno) from None
        try:
            if not daemonfiles.try_lock(fd):
                holder = daemonfiles.lock_holder(fd)
                held_by = daemonfiles.read_small(fd).strip() or "another daemon"
                raise StateError(
                    f"state file {self.path} is in use by pid {holder} ({held_by})"
                )
            daemonfiles.write_whole(fd, f"pid {os.getpid()} serving {view}\n")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_corrupt(self, raw: bytes, problem: str) -> NoReturn:
        kept = self._set_aside(raw)
        raise StateError(_one_line(f"state file {self.path}: invalid: {problem} ({kept})"))

    def _set_aside(self, raw: bytes) -> str:
        """Copy raw to a new `<path>.corrupt-<UTC time>` file; say where, or why not."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        base = f"{self.path}.corrupt-{stamp}"
        for attempt in range(100):
            candidate = base if attempt == 0 else f"{base}.{attempt}"
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                return f"could not keep a copy: {exc.strerror}"
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                return f"copy {candidate} may be incomplete: {exc.strerror}"
            finally:
                os.close(fd)
            return f"copy kept at {candidate}"
        return "could not keep a copy: too many copies with the same time stamp"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse_json(raw: bytes) -> object:
    def no_constants(name: str) -> object:
        raise _Invalid(f"not JSON: {name} is not a number")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(f"not UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise _Invalid("file is empty")
    try:
        doc: object = json.loads(text, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"not JSON: {exc}") from None
    except RecursionError:
        raise _Invalid("not JSON: nested too deeply") from None
    return doc


def _envelope_version(doc: object) -> tuple[int, object]:
    """The format version of a document; a bare list is version 0."""
    if isinstance(doc, list):
        return 0, doc
    if not isinstance(doc, dict):
        raise _Invalid("top level is neither an object nor a list")
    if doc.get("format") != FORMAT_NAME:
        raise _Invalid(f'"format" is not "{FORMAT_NAME}"')
    version = doc.get("version")
    if type(version) is not int or version < 0:
        raise _Invalid('"version" is not a non-negative integer')
    return version, doc


# -- encoding: every field by name, enums by value ---------------------------------


def _encode_spec(spec: SubtreeSpec) -> dict[str, object]:
    identity = spec.identity
    return {
        "name": spec.name,
        "kind": spec.kind.value,
        "source": spec.source,
        "identity": None
        if identity is None
        else {
            "dev": identity.dev,
            "ino": identity.ino,
            "mount_id": identity.mount_id,
            "fstype": identity.fstype,
        },
        "policy": {
            "owner": spec.policy.owner,
            "grants": [
                {"kind": g.kind.value, "id": g.id, "access": g.access.value}
                for g in spec.policy.grants
            ],
            "ro": spec.policy.ro,
            "squash_root": spec.policy.squash_root,
        },
        "fstype": spec.fstype,
        "options": spec.options,
        "holders": list(spec.holders),
        "created_with_holder": spec.created_with_holder,
        "expire_s": spec.expire_s,
        "state": spec.state.value,
        "reason": spec.reason,
        "declared": spec.declared,
    }


# -- decoding: strict, each failure names the field --------------------------------


class _Fields:
    """One JSON object being decoded: typed getters that name the field on failure."""

    def __init__(self, value: object, where: str, required: set[str], optional: set[str]):
        label = where or "top level"
        if not isinstance(value, dict):
            raise _Invalid(f"{label}: not an object")
        unknown = sorted(str(k) for k in value if k not in required | optional)
        if unknown:
            raise _Invalid(f"{label}: unknown field {unknown[0]!r}")
        missing = sorted(required - value.keys())
        if missing:
            raise _Invalid(f"{label}: missing field {missing[0]!r}")
        self._value: Mapping[str, object] = value
        self._where = where

    def raw(self, key: str) -> object:
        return self._value[key]

    def at(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def str_(self, key: str, default: str = "") -> str:
        value = self._value.get(key, default)
        if not isinstance(value, str):
            raise _Invalid(f"{self.at(key)}: not a string")
        return value

    def uint(self, key: str) -> int:
        value = self._value.get(key)
        if type(value) is not int or value < 0:
            raise _Invalid(f"{self.at(key)}: not a non-negative integer")
        return value

    def bool_(self, key: str, default: bool = False) -> bool:
        value = self._value.get(key, default)
        if not isinstance(value, bool):
            raise _Invalid(f"{self.at(key)}: not true or false")
        return value

    def float_(self, key: str, default: float = 0.0) -> float:
        value = self._value.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _Invalid(f"{self.at(key)}: not a non-negative number")
        return float(value)

    def enum(self, key: str, cls: type[_E], default: _E | None = None) -> _E:
        value = self._value.get(key, None if default is None else default.value)
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise _Invalid(f"{self.at(key)}: not one of {allowed}") from None

    def list_(self, key: str) -> list[object]:
        value = self._value.get(key, [])
        if not isinstance(value, list):
            raise _Invalid(f"{self.at(key)}: not a list")
        return value


_SPEC_REQUIRED = {"name", "kind", "source", "identity", "policy"}
_SPEC_OPTIONAL = {
    "fstype",
    "options",
    "holders",
    "created_with_holder",
    "expire_s",
    "state",
    "reason",
    "declared",
}


def _decode_table(doc: object) -> list[SubtreeSpec]:
    top = _Fields(doc, "", {"format", "version", "subtrees"}, set())
    entries = top.list_("subtrees")
    specs = [_decode_spec(entry, f"subtrees[{i}]") for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise _Invalid(f"subtree name {spec.name!r} appears twice")
        seen.add(spec.name)
    return specs


def _decode_spec(value: object, where: str) -> SubtreeSpec:
    f = _Fields(value, where, _SPEC_REQUIRED, _SPEC_OPTIONAL)
    name = f.str_("name")
    if not NAME_RE.fullmatch(name):
        raise _Invalid(f"{f.at('name')}: {name!r} is not a valid subtree name")
    holders: list[str] = []
    for i, holder in enumerate(f.list_("holders")):
        if not isinstance(holder, str) or not HOLDER_RE.fullmatch(holder):
            raise _Invalid(f"{f.at('holders')}[{i}]: not a valid holder id")
        if holder in holders:
            raise _Invalid(f"{f.at('holders')}[{i}]: holder {holder!r} appears twice")
        holders.append(holder)
    identity = f.raw("identity")
    return SubtreeSpec(
        name=name,
        kind=f.enum("kind", Kind),
        source=f.str_("source"),
        identity=None if identity is None else _decode_identity(identity, f.at("identity")),
        policy=_decode_policy(f.raw("policy"), f.at("policy")),
        fstype=f.str_("fstype"),
        options=f.str_("options"),
        holders=tuple(holders),
        created_with_holder=f.bool_("created_with_holder"),
        expire_s=f.float_("expire_s"),
        state=f.enum("state", State, State.ATTACHED),
        reason=f.str_("reason"),
        declared=f.bool_("declared"),
    )


def _decode_identity(value: object, where: str) -> Identity:
    f = _Fields(value, where, {"dev", "ino", "mount_id", "fstype"}, set())
    return Identity(
        dev=f.uint("dev"), ino=f.uint("ino"), mount_id=f.uint("mount_id"), fstype=f.str_("fstype")
    )


def _decode_policy(value: object, where: str) -> Policy:
    f = _Fields(value, where, {"owner"}, {"grants", "ro", "squash_root"})
    grants = tuple(
        _decode_grant(g, f"{f.at('grants')}[{i}]") for i, g in enumerate(f.list_("grants"))
    )
    return Policy(
        owner=f.uint("owner"),
        grants=grants,
        ro=f.bool_("ro"),
        squash_root=f.bool_("squash_root"),
    )


def _decode_grant(value: object, where: str) -> Grant:
    f = _Fields(value, where, {"kind", "id", "access"}, set())
    access = f.raw("access")
    if type(access) is not int or access not in {a.value for a in Access}:
        allowed = ", ".join(str(a.value) for a in Access)
        raise _Invalid(f"{f.at('access')}: not one of {allowed}")
    return Grant(kind=f.enum("kind", GrantKind), id=f.uint("id"), access=Access(access))
