"""The ctl language: bytes written to `.fusemount/ctl` -> Command, reply record -> bytes.

Pure: no file, socket, table or clock is touched here, and nothing from os, pyfuse3 or
trio is imported. `parse()` returns a Command or raises ControlError with EINVAL or
E2BIG; any other exception is a bug. Whether a command is allowed, or what it does to
the subtree table, is decided elsewhere (policy.py, subtrees.py).

SPEC 4: "The ctl protocol", "Commands", "Errors" (the syntax rows).
"""

from __future__ import annotations

import errno
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

from fusemount.core.records import Access, ControlError, GrantSpec

# SPEC 3 / SPEC 4: subtree names.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# SPEC 4 "Holders".
HOLDER_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# SPEC 4 `mount NAME FSTYPE`; also the words of access.fstypes / mount_fstypes (SPEC 7).
FSTYPE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
# SPEC 4 `owner=USER`, `allow=USER:..,@GROUP:..`: a POSIX-portable user or group name
# (the useradd default), at most USER_MAX_LEN characters ...
USER_RE = re.compile(r"[a-z_][a-z0-9_.-]*\$?")
USER_MAX_LEN = 32
# ... or a decimal uid/gid; (uid_t)-1 is "no change" to chown, never an identity.
ID_RE = re.compile(r"[0-9]{1,10}")
ID_MAX = 2**32 - 2
# SPEC 4 `expire=SECONDS`: decimal (exponent allowed), so "inf", "nan", "0x10", "1_0" fail.
SECONDS_RE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,3})?")
EXPIRE_MAX_S = 10 * 365 * 86400

DEFAULT_MAX_BYTES = 4096  # SPEC 4 / SPEC 6 max_command_bytes

_T = TypeVar("_T")

# Every character str.splitlines() breaks on: a write holding any of them is "more than
# one line" (SPEC 4), even if the shell splitter would have taken it for a blank.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@dataclass(frozen=True, slots=True)
class Attach:
    verb: ClassVar[str] = "attach"

    name: str
    source: str
    ro: bool = False
    owner: str | None = None
    allow: tuple[GrantSpec, ...] | None = None  # None: not given; (): no grants
    holder: str | None = None
    expire_s: float = 0.0  # 0 = never


@dataclass(frozen=True, slots=True)
class Mount:
    verb: ClassVar[str] = "mount"

    name: str
    fstype: str
    source: str  # "none" or an absolute path
    ro: bool = False
    options: str = ""  # verbatim, for fsconfig
    owner: str | None = None
    allow: tuple[GrantSpec, ...] | None = None
    holder: str | None = None
    expire_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Hold:
    verb: ClassVar[str] = "hold"

    name: str
    holder: str


@dataclass(frozen=True, slots=True)
class Release:
    verb: ClassVar[str] = "release"

    name: str
    holder: str


@dataclass(frozen=True, slots=True)
class Set:
    """Every field but name is None when not given; at least one is given."""

    verb: ClassVar[str] = "set"

    name: str
    ro: bool | None = None
    owner: str | None = None
    allow: tuple[GrantSpec, ...] | None = None
    squash_root: bool | None = None


@dataclass(frozen=True, slots=True)
class Detach:
    verb: ClassVar[str] = "detach"

    name: str
    force: bool = False


Command: TypeAlias = Attach | Mount | Hold | Release | Set | Detach



def verb_of(cmd: Command) -> str:
    """The command word, as written in the ctl language."""
    return cmd.verb


# --- parsing -------------------------------------------------------------------------


def parse(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Command:
    """Parse one ctl write.

    Returns a Command; raises ControlError(E2BIG) if the command (without its optional
    trailing newline) exceeds max_bytes, ControlError(EINVAL) for anything else wrong.
    Never raises anything else.
    """
    if data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > max_bytes:
        raise ControlError(errno.E2BIG, f"command is {len(data)} bytes, longer than {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid("command is not UTF-8") from None
    if "\0" in text:
        raise _invalid("command contains a NUL byte")
    if not _LINE_BREAKS.isdisjoint(text):
        raise _invalid("more than one line: write one command per write()")
    if not text.strip():
        raise _invalid("empty command")
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise _invalid(f"syntax: {str(exc).lower()}") from None
    if not words:
        raise _invalid("empty command")
    verb, args = words[0], words[1:]
    grammar = _GRAMMARS.get(verb)
    if grammar is None:
        known = ", ".join(_GRAMMARS)
        raise _invalid(f"unknown command {_show(verb)} (known: {known})")
    return grammar.build(grammar.split(args))


@dataclass(frozen=True, slots=True)
class _Words:
    """A command's arguments sorted by role; values are still unchecked text."""

    positionals: tuple[str, ...]
    flags: Mapping[str, str]  # slot -> the word given for it
    options: Mapping[str, str]  # key -> value


@dataclass(frozen=True, slots=True)
class _Grammar:
    usage: str
    positionals: tuple[str, ...]  # placeholders, as in the usage line
    flags: Mapping[str, str]  # word -> slot; words sharing a slot exclude each other
    options: tuple[str, ...]  # accepted `key=` words
    build: Callable[[_Words], Command]

    def split(self, args: list[str]) -> _Words:
        """Sort args into positionals, flags and options; EINVAL on any misfit."""
        verb = self.usage.split(" ", 1)[0]
        n = len(self.positionals)
        if len(args) < n:
            raise _invalid(f"{verb}: missing {self.positionals[len(args)]}; usage: {self.usage}")
        flags: dict[str, str] = {}
        options: dict[str, str] = {}
        for word in args[n:]:
            key, eq, value = word.partition("=")
            if eq:
                if key not in self.options:
                    option = _show(key + "=")
                    raise _invalid(f"{verb}: unknown option {option}; usage: {self.usage}")
                if key in options:
                    raise _invalid(f"{verb}: option {key}= given twice")
                options[key] = value
            elif word in self.flags:
                slot = self.flags[word]
                if slot in flags:
                    if flags[slot] == word:
                        raise _invalid(f"{verb}: option {word} given twice")
                    raise _invalid(f"{verb}: options {flags[slot]} and {word} exclude each other")
                flags[slot] = word
            else:
                raise _invalid(f"{verb}: unexpected argument {_show(word)}; usage: {self.usage}")
        return _Words(tuple(args[:n]), flags, options)


def _build_attach(w: _Words) -> Attach:
    name, source = w.positionals
    return Attach(
        name=_check_name(name),
        source=_check_abs_path(source, "attach: SOURCE"),
        ro="ro" in w.flags,
        owner=_optional(w, "owner", _check_owner),
        allow=_optional(w, "allow", _parse_allow),
        holder=_optional(w, "holder", _check_holder),
        expire_s=_optional(w, "expire", _parse_expire) or 0.0,
    )


def _build_mount(w: _Words) -> Mount:
    name, fstype, source = w.positionals
    if not FSTYPE_RE.fullmatch(fstype):
        raise _invalid(f"mount: bad filesystem type {_show(fstype)}")
    if source != "none":
        _check_abs_path(source, "mount: SOURCE")
    return Mount(
        name=_check_name(name),
        fstype=fstype,
        source=source,
        ro="ro" in w.flags,
        options=w.options.get("options", ""),
        owner=_optional(w, "owner", _check_owner),
        allow=_optional(w, "allow", _parse_allow),
        holder=_optional(w, "holder", _check_holder),
        expire_s=_optional(w, "expire", _parse_expire) or 0.0,
    )


def _build_hold(w: _Words) -> Hold:
    name, holder = w.positionals
    return Hold(_check_name(name), _check_holder(holder))


def _build_release(w: _Words) -> Release:
    name, holder = w.positionals
    return Release(_check_name(name), _check_holder(holder))


def _build_set(w: _Words) -> Set:
    (name,) = w.positionals
    _check_name(name)
    if not w.flags and not w.options:
        raise _invalid("set: nothing to change; usage: " + _GRAMMARS["set"].usage)
    mode = w.flags.get("mode")
    return Set(
        name=name,
        ro=None if mode is None else mode == "ro",
        owner=_optional(w, "owner", _check_owner),
        allow=_optional(w, "allow", _parse_allow),
        squash_root=_optional(w, "squash", _parse_squash),
    )


def _build_detach(w: _Words) -> Detach:
    (name,) = w.positionals
    return Detach(_check_name(name), force="force" in w.flags)


_GRAMMARS: dict[str, _Grammar] = {
    "attach": _Grammar(
        "attach NAME SOURCE [ro] [owner=USER] [allow=LIST] [holder=ID] [expire=SECONDS]",
        ("NAME", "SOURCE"),
        {"ro": "ro"},
        ("owner", "allow", "holder", "expire"),
        _build_attach,
    ),
    "mount": _Grammar(
        "mount NAME FSTYPE SOURCE [ro] [options=OPTS] [owner=USER] [allow=LIST]"
        " [holder=ID] [expire=SECONDS]",
        ("NAME", "FSTYPE", "SOURCE"),
        {"ro": "ro"},
        ("options", "owner", "allow", "holder", "expire"),
        _build_mount,
    ),
    "hold": _Grammar("hold NAME HOLDER", ("NAME", "HOLDER"), {}, (), _build_hold),
    "release": _Grammar("release NAME HOLDER", ("NAME", "HOLDER"), {}, (), _build_release),
    "set": _Grammar(
        "set NAME [ro|rw] [owner=USER] [allow=LIST] [squash=root|none]",
        ("NAME",),
        {"ro": "mode", "rw": "mode"},
        ("owner", "allow", "squash"),
        _build_set,
    ),
    "detach": _Grammar("detach NAME [force]", ("NAME",), {"force": "force"}, (), _build_detach),
}


def _optional(w: _Words, key: str, check: Callable[[str], _T]) -> _T | None:
    value = w.options.get(key)
    return None if value is None else check(value)


def _check_name(word: str) -> str:
    if not NAME_RE.fullmatch(word):
        raise _invalid(f"bad name {_show(word)}: expected [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    return word


def _check_holder(word: str) -> str:
    if not HOLDER_RE.fullmatch(word):
        raise _invalid(f"bad holder id {_show(word)}: expected [A-Za-z0-9._:-]{{1,128}}")
    return word


def _check_abs_path(word: str, what: str) -> str:
    # NUL was refused for the whole command already; this keeps the check local too.
    if not word.startswith("/") or "\0" in word:
        raise _invalid(f"{what} must be an absolute path, got {_show(word)}")
    return word


def is_principal(word: str) -> bool:
    """A user or group written by name or by number (no `@`, no `*`)."""
    if ID_RE.fullmatch(word):
        return int(word) <= ID_MAX
    return len(word) <= USER_MAX_LEN and USER_RE.fullmatch(word) is not None


def _check_owner(word: str) -> str:
    if not is_principal(word):
        raise _invalid(f"owner: expected a user name or uid, got {_show(word)}")
    return word


def _parse_allow(value: str) -> tuple[GrantSpec, ...]:
    """`allow=` LIST -> grants as written; an empty LIST means no grants at all."""
    if not value.strip():
        return ()
    grants: list[GrantSpec] = []
    seen: set[tuple[str, bool]] = set()
    for raw in value.split(","):
        entry = raw.strip()
        principal, colon, mode = entry.rpartition(":")
        if not colon or mode not in ("ro", "rw"):
            raise _invalid(f"allow: entry {_show(entry)} must end in :ro or :rw")
        is_group = principal.startswith("@")
        bare = principal[1:] if is_group else principal
        if principal == "*":
            if mode != "ro":
                # SPEC 4 lists only `*:ro`: everyone may never write.
                raise _invalid("allow: '*:rw' is not allowed, everyone may only have '*:ro'")
        elif not is_principal(bare):
            kind = "group" if is_group else "user"
            raise _invalid(f"allow: bad {kind} {_show(bare)} in entry {_show(entry)}")
        if (bare, is_group) in seen:
            raise _invalid(f"allow: {_show(principal)} is listed twice")
        seen.add((bare, is_group))
        grants.append(GrantSpec(bare, is_group, Access.RO if mode == "ro" else Access.RW))
    return tuple(grants)


def _parse_expire(word: str) -> float:
    seconds = float(word) if SECONDS_RE.fullmatch(word) else math.nan
    # nan fails both comparisons, so malformed and out-of-range words land here alike.
    if not 0 < seconds <= EXPIRE_MAX_S:
        raise _invalid(
            f"expire: expected a number of seconds in (0, {EXPIRE_MAX_S}], got {_show(word)}"
        )
    return seconds


def _parse_squash(word: str) -> bool:
    if word not in ("root", "none"):
        raise _invalid(f"squash: expected 'root' or 'none', got {_show(word)}")
    return word == "root"


def _invalid(message: str) -> ControlError:
    return ControlError(errno.EINVAL, message)


def _show(word: str, limit: int = 48) -> str:
    """Quote user text for a message: one line, bounded, escapes visible."""
    if len(word) > limit:
        return repr(word[:limit]) + "..."
    return repr(word)


# --- writing commands (for the CLI wrappers) -----------------------------------------


def format_command(cmd: Command) -> str:
    """One ctl line (no newline) that parse() turns back into an equal Command."""
    words: list[str] = [cmd.verb, cmd.name]
    match cmd:
        case Attach():
            words += [cmd.source, *_flag(cmd.ro, "ro")]
            words += _common_options(cmd.owner, cmd.allow, cmd.holder, cmd.expire_s)
        case Mount():
            words += [cmd.fstype, cmd.source, *_flag(cmd.ro, "ro")]
            words += [f"options={cmd.options}"] if cmd.options else []
            words += _common_options(cmd.owner, cmd.allow, cmd.holder, cmd.expire_s)
        case Hold() | Release():
            words.append(cmd.holder)
        case Set():
            words += [] if cmd.ro is None else ["ro" if cmd.ro else "rw"]
            words += _common_options(cmd.owner, cmd.allow, None, 0.0)
            if cmd.squash_root is not None:
                words.append("squash=root" if cmd.squash_root else "squash=none")
        case Detach():
            words += _flag(cmd.force, "force")
    return shlex.join(words)


def usage(verb: str) -> str:
    """The usage line of verb, as SPEC 4 writes it ("set NAME [ro|rw] ...")."""
    return _GRAMMARS[verb].usage


def render(verb: str, positionals: Sequence[str], flags: Sequence[str] = (),
           options: Sequence[tuple[str, str]] = ()) -> str:
    """One ctl line from its parts, in the grammar's order: verb, positionals, flags,
    `key=value` options, each word quoted. ValueError for a verb, flag or option key the
    grammar does not have, or the wrong number of positionals: the client and the CLI speak
    the daemon's vocabulary, never a copy of it. Values are the daemon's to judge."""
    grammar = _GRAMMARS.get(verb)
    if grammar is None:
        raise ValueError(f"unknown command {verb!r}")
    if len(positionals) != len(grammar.positionals):
        raise ValueError(f"{verb} takes {' '.join(grammar.positionals)}")
    for flag in flags:
        if flag not in grammar.flags:
            raise ValueError(f"{verb}: no option {flag!r}")
    for key, _ in options:
        if key not in grammar.options:
            raise ValueError(f"{verb}: no option {key + '='!r}")
    return shlex.join([verb, *positionals, *flags, *(f"{k}={v}" for k, v in options)])


def _flag(is_set: bool, word: str) -> list[str]:
    return [word] if is_set else []


def _common_options(
    owner: str | None, allow: tuple[GrantSpec, ...] | None, holder: str | None, expire_s: float
) -> list[str]:
    words: list[str] = []
    if owner is not None:
        words.append(f"owner={owner}")
    if allow is not None:
        words.append("allow=" + ",".join(_render_grant_spec(g) for g in allow))
    if holder is not None:
        words.append(f"holder={holder}")
    if expire_s:
        words.append(f"expire={expire_s!r}")
    return words


def _render_grant_spec(grant: GrantSpec) -> str:
    prefix = "@" if grant.is_group else ""
    return f"{prefix}{grant.principal}:{'ro' if grant.access is Access.RO else 'rw'}"


# --- replies -------------------------------------------------------------------------


def render_ok(**fields: object) -> bytes:
    """`{"ok": true, ...fields}` as one line of JSON ending in a newline (SPEC 4)."""
    if "ok" in fields:
        raise ValueError("a reply field may not be called 'ok'")
    return _line({"ok": True, **fields})


def render_error(errno_: int, message: str) -> bytes:
    """`{"ok": false, "errno": "EXXX", "message": ...}` as one line of JSON (SPEC 4)."""
    name = errno.errorcode.get(errno_, str(errno_))
    return _line({"ok": False, "errno": name, "message": message})


def _line(reply: dict[str, object]) -> bytes:
    # ensure_ascii keeps the reply one line whatever the message holds (U+2028 included);
    # allow_nan=False because NaN is not JSON and would break strict readers.
    return (json.dumps(reply, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
