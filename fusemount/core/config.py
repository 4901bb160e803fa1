"""TOML text -> frozen Config: every default and every check of the configuration.

Pure: reads no file (the caller passes the text) and imports nothing from os, pyfuse3
or trio. Validation is complete and strict: an unknown section or key, or a value of
the wrong type or out of range, raises ConfigError with one line naming the key, so
`serve` can stop with it (SPEC 7). Booleans are never accepted as numbers.

SPEC 7 "Configuration", with the SPEC 6 limits.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import fields

from fusemount.core import protocol
from fusemount.core.protocol import FSTYPE_RE, is_principal
from fusemount.core.records import (
    AccessConfig,
    CacheConfig,
    Config,
    ControlError,
    Limits,
    LogConfig,
    PerformanceConfig,
    SubtreeDecl,
)

# Inclusive bounds of every integer limit (SPEC 6). The lower bounds keep the daemon
# usable (a command must fit a usage line; the fd cache must hold a working set); the
# upper ones stay under what the process can hold (the hard RLIMIT_NOFILE here is 20000).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "max_subtrees": (1, 65536),
    "max_subtrees_per_user": (1, 65536),
    "max_holders": (1, 1048576),
    "max_open_files": (1, 16384),
    "max_open_files_per_user": (1, 16384),
    "max_command_bytes": (64, 1048576),
    "max_cached_fds": (64, 16384),
    "max_inodes": (1024, 16777216),
    "spin_us": (0, 1000),
}
# Timeouts in seconds: a day is already far beyond any useful value.
TIMEOUT_MAX_S = 86400.0

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "stderr", "syslog", "file")
_SUBTREE_KEYS = {f.name for f in fields(SubtreeDecl)}


class ConfigError(ValueError):
    """A rejected configuration; str() is one line naming the key (SPEC 7)."""


def load_config(text: str | None) -> Config:
    """The Config for a file's text, or the built-in defaults for None. Raises ConfigError."""
    return Config() if text is None else parse_config(text)


def parse_config(text: str) -> Config:
    """Parse and validate TOML text. Every key is optional; raises ConfigError."""
    try:
        document: dict[str, object] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message carries "(at line N, column M)"
        raise ConfigError(f"TOML syntax error: {_one_line(str(exc))}") from None
    except RecursionError:  # arrays nested thousands deep
        raise ConfigError("TOML syntax error: nesting too deep") from None

    declared = _subtrees(document.pop("subtree", []))
    sections = {name: _Section(name, document.pop(name, {})) for name in _SECTIONS}
    for name, value in document.items():
        kind = "section" if isinstance(value, dict) else "key"
        raise ConfigError(f"unknown {kind} {_key(name)}")
    for name, record_type in _SECTIONS.items():
        sections[name].refuse_unknown({f.name for f in fields(record_type)})

    access, limits, cache, performance, log = (sections[name] for name in _SECTIONS)
    a, lim, c, pf, lg = AccessConfig(), Limits(), CacheConfig(), PerformanceConfig(), LogConfig()
    return Config(
        access=AccessConfig(
            admins=access.words("admins", a.admins, _is_admin, "a user name, uid or @group"),
            self_service=access.boolean("self_service", a.self_service),
            self_service_roots=access.words(
                "self_service_roots", a.self_service_roots, _is_abs_path, "an absolute path"
            ),
            source_roots=access.words(
                "source_roots", a.source_roots, _is_abs_path, "an absolute path"
            ),
            fstypes=access.words("fstypes", a.fstypes, _is_fstype, "a filesystem type"),
            require_mountpoint=access.boolean("require_mountpoint", a.require_mountpoint),
            mount_fstypes=access.words(
                "mount_fstypes", a.mount_fstypes, _is_fstype, "a filesystem type"
            ),
            deny_special_files=access.boolean("deny_special_files", a.deny_special_files),
            hide_names=access.boolean("hide_names", a.hide_names),
        ),
        limits=Limits(
            max_subtrees=limits.integer("max_subtrees", lim.max_subtrees),
            max_subtrees_per_user=limits.integer(
                "max_subtrees_per_user", lim.max_subtrees_per_user
            ),
            max_holders=limits.integer("max_holders", lim.max_holders),
            max_open_files=limits.integer("max_open_files", lim.max_open_files),
            max_open_files_per_user=limits.integer(
                "max_open_files_per_user", lim.max_open_files_per_user
            ),
            max_command_bytes=limits.integer("max_command_bytes", lim.max_command_bytes),
            max_cached_fds=limits.integer("max_cached_fds", lim.max_cached_fds),
            max_inodes=limits.integer("max_inodes", lim.max_inodes),
            request_timeout_s=limits.seconds(
                "request_timeout_s", lim.request_timeout_s, zero_ok=False
            ),
        ),
        cache=CacheConfig(
            entry_timeout=cache.seconds("entry_timeout", c.entry_timeout, zero_ok=True),
            attr_timeout=cache.seconds("attr_timeout", c.attr_timeout, zero_ok=True),
        ),
        performance=PerformanceConfig(
            busy_poll=performance.boolean("busy_poll", pf.busy_poll),
            spin_us=performance.integer("spin_us", pf.spin_us),
        ),
        log=LogConfig(
            audit=log.string("audit", lg.audit, _is_audit_target, 'an absolute path or ""'),
            level=log.string("level", lg.level, LOG_LEVELS.__contains__,
                             "one of " + ", ".join(LOG_LEVELS)),
            target=log.string("target", lg.target, LOG_TARGETS.__contains__,
                              "one of " + ", ".join(LOG_TARGETS)),
            file=log.string("file", lg.file, _is_audit_target, 'an absolute path or ""'),
            syslog_socket=log.string("syslog_socket", lg.syslog_socket, _is_abs_path,
                                     "an absolute path"),
        ),
        subtrees=declared,
    )


def _subtrees(value: object) -> tuple[SubtreeDecl, ...]:
    """`[[subtree]]` tables, each checked as the ctl command it stands for (SPEC 4)."""
    if not isinstance(value, list):
        raise ConfigError(f"subtree: expected [[subtree]] tables, got {_show(value)}")
    out: list[SubtreeDecl] = []
    names: set[str] = set()
    for index, table in enumerate(value):
        where = f"subtree[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {_show(table)}")
        section = _Section(where, table)
        section.refuse_unknown(_SUBTREE_KEYS)
        for key in ("name", "source"):
            if key not in table:
                raise ConfigError(f"{where}: missing key {key}")
        owner = table.get("owner", "")
        if isinstance(owner, int) and not isinstance(owner, bool) and owner >= 0:
            owner = str(owner)  # a uid may be written as a number
        allow = table.get("allow", [])
        if isinstance(allow, str):
            allow = [word for word in allow.split(",") if word.strip()]
        decl = SubtreeDecl(
            name=section.string("name", "", lambda w: True, "a subtree name"),
            source=section.string("source", "", lambda w: True, "a path"),
            fstype=section.string("fstype", "", lambda w: True, "a filesystem type"),
            options=section.string("options", "", lambda w: True, "mount options"),
            ro=section.boolean("ro", False),
            owner=_Section(where, {"owner": owner}).string(
                "owner", "", lambda w: True, "a user name or uid"),
            allow=_Section(where, {"allow": allow}).words(
                "allow", (), lambda w: True, "an allow= entry"),
        )
        if decl.options and not decl.fstype:
            raise ConfigError(f"{where}.options: only for a subtree with fstype (a mount)")
        try:
            protocol.parse(decl_command(decl).encode("utf-8", "surrogateescape"), 1 << 20)
        except ControlError as exc:
            raise ConfigError(f"{where} ({decl.name}): {exc.message}") from None
        if decl.name in names:
            raise ConfigError(f"{where}.name: {decl.name} is declared twice")
        names.add(decl.name)
        out.append(decl)
    return tuple(out)


def decl_command(decl: SubtreeDecl) -> str:
    """The ctl command that attaches or mounts a declared subtree."""
    if decl.fstype:
        words = ["mount", decl.name, decl.fstype, decl.source]
        words += [f"options={decl.options}"] if decl.options else []
    else:
        words = ["attach", decl.name, decl.source]
    return shlex.join(words + _decl_options(decl))


def decl_set_command(decl: SubtreeDecl) -> str:
    """The ctl `set` that gives an attached subtree the declared ro/owner/allow."""
    words = ["set", decl.name, "ro" if decl.ro else "rw", f"owner={decl.owner or 'root'}",
             "allow=" + ",".join(decl.allow)]
    return shlex.join(words)


def _decl_options(decl: SubtreeDecl) -> list[str]:
    words = ["ro"] if decl.ro else []
    words += [f"owner={decl.owner or 'root'}"]
    words += ["allow=" + ",".join(decl.allow)] if decl.allow else []
    return words


_SECTIONS: dict[str, type] = {
    "access": AccessConfig,
    "limits": Limits,
    "cache": CacheConfig,
    "performance": PerformanceConfig,
    "log": LogConfig,
}


class _Section:
    """One [section] of the document; each getter checks one key or returns its default."""

    def __init__(self, name: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: expected a table, got {_show(table)}")
        self.name = name
        self.table: dict[str, object] = table

    def refuse_unknown(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                raise ConfigError(f"unknown key {self.name}.{_key(key)}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._error(key, f"expected a boolean, got {_show(value)}")
        return value

    def integer(self, key: str, default: int) -> int:
        value = self.table.get(key, default)
        # bool is an int subclass: `max_subtrees = true` must not mean 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._error(key, f"expected an integer, got {_show(value)}")
        low, high = INT_BOUNDS[key]
        if not low <= value <= high:
            raise self._error(key, f"expected an integer from {low} to {high}, got {value}")
        return value

    def seconds(self, key: str, default: float, *, zero_ok: bool) -> float:
        value = self.table.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._error(key, f"expected a number of seconds, got {_show(value)}")
        seconds = float(value)
        is_low = seconds < 0 if zero_ok else seconds <= 0
        if math.isnan(seconds) or is_low or seconds > TIMEOUT_MAX_S:
            low = ">= 0" if zero_ok else "> 0"
            raise self._error(
                key, f"expected seconds {low} and <= {TIMEOUT_MAX_S:g}, got {_show(value)}"
            )
        return seconds

    def string(self, key: str, default: str, check: Callable[[str], bool], what: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or not check(value):
            raise self._error(key, f"expected {what}, got {_show(value)}")
        return value

    def words(
        self, key: str, default: tuple[str, ...], check: Callable[[str], bool], what: str
    ) -> tuple[str, ...]:
        value = self.table.get(key, list(default))
        if not isinstance(value, list):
            raise self._error(key, f"expected a list, got {_show(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not check(item):
                raise ConfigError(f"{self.name}.{key}[{index}]: expected {what}, got {_show(item)}")
        return tuple(value)

    def _error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.name}.{key}: {problem}")


def _is_admin(word: str) -> bool:
    return is_principal(word[1:] if word.startswith("@") else word)


def _is_abs_path(word: str) -> bool:
    return word.startswith("/") and "\0" not in word


def _is_audit_target(word: str) -> bool:
    # A relative path would depend on the daemon's working directory: refuse it.
    return word == "" or _is_abs_path(word)


def _is_fstype(word: str) -> bool:
    return FSTYPE_RE.fullmatch(word) is not None


def _key(name: str) -> str:
    """A key as TOML would write it, so odd keys stay visible and on one line."""
    return name if _BARE_KEY_RE.fullmatch(name) else _toml_string(name)


def _show(value: object, limit: int = 60) -> str:
    text = _toml_value(value) if isinstance(value, bool) else repr(value)
    return _one_line(text[:limit] + "..." if len(text) > limit else text)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


# --- rendering -------------------------------------------------------------------------

_COMMENTS: dict[str, str] = {
    "access.admins": "users, uids and @groups; uid 0 is always an admin",
    "access.self_service_roots": "where non-admins may attach what they own",
    "access.source_roots": "empty: any directory",
    "access.fstypes": "empty: any type",
    "limits.max_open_files_per_user": "per non-admin user (EMFILE); admins keep the last "
    "eighth of max_open_files",
    "limits.max_cached_fds": "descriptors kept for inodes the kernel knows",
    "limits.max_inodes": "inodes known before the kernel is asked to forget cold ones",
    "access.hide_names": "true: outsiders get ENOENT, one request per walk (SPEC 5)",
    "performance.busy_poll": "opt-in, host-wide: idle CPUs poll while requests flow",
    "performance.spin_us": "after a reply, wait this long awake for the next request "
    "(this process only; adaptive); 0: never",
    "log.audit": 'JSON-lines audit log; "" = in the daemon log (foreground) or '
                 "/var/log/fusemount/VIEW.audit.jsonl (detached)",
    "log.level": "debug, info, warning or error",
    "log.target": "auto (stderr; syslog when detached), stderr, syslog or file",
    "log.file": 'target = "file": "" = /var/log/fusemount/VIEW.log',
    "log.syslog_socket": "where syslog listens; if it is missing: stderr, or log.file detached",
}


def dump_config(config: Config) -> str:
    """Render config as TOML that parse_config() turns back into an equal Config."""
    lines: list[str] = []
    for section in fields(config):
        if section.name == "subtrees":
            continue
        record = getattr(config, section.name)
        if lines:
            lines.append("")
        lines.append(f"[{section.name}]")
        for item in fields(record):
            line = f"{item.name} = {_toml_value(getattr(record, item.name))}"
            comment = _COMMENTS.get(f"{section.name}.{item.name}")
            lines.append(f"{line}  # {comment}" if comment else line)
    for decl in config.subtrees:
        lines += ["", "[[subtree]]"]
        lines += [f"{item.name} = {_toml_value(getattr(decl, item.name))}"
                  for item in fields(decl)]
    return "\n".join(lines) + "\n"


def defaults_toml() -> str:
    """The effective defaults as a TOML document (what `serve` runs on without a config)."""
    return dump_config(Config())


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr() keeps every digit and a "." or exponent, so the value reads back a float.
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":  # TOML basic strings forbid raw controls
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
