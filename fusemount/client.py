"""Python client of a running view: commands through `.fusemount/ctl`, listings from its files.

Talks to the daemon only through VIEW/.fusemount/ (ctl, mounts, mounts.json, version),
exactly as a shell script would: one write() per command on a fresh O_RDWR descriptor,
then a read() of the reply on that same descriptor. The typed methods build their commands
with core/protocol.py's grammar (the daemon's own vocabulary) and every word is quoted with
shlex.quote, so no value can add, split or drop a word of the command.

Never: retry a command (it may have changed state), repair or reinterpret a reply, guess
at anything the daemon did not say, or touch a source or the state file directly.

SPEC 4 (the ctl protocol, commands, errors) and SPEC 9 (what the wrappers build on).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from fusemount.core import protocol
from fusemount.core.mounts import MountRecord

CONTROL_DIR = ".fusemount"
# A reply is one JSON line; this bounds what a broken daemon can make us buffer.
MAX_REPLY_BYTES = 1 << 20
# mounts.json lists at most max_subtrees (64 by default) subtrees of up to 1024 holders each;
# the cap leaves room for raised limits while keeping a runaway file from eating memory.
MAX_LISTING_BYTES = 64 << 20
# The daemon answered something that is not the protocol: ours to report, not a daemon errno.
PROTOCOL_ERRNO = errno_mod.EPROTO

Reply = dict[str, object]
__all__ = ["Client", "ControlFailed", "CtlFile", "MountRecord", "parse_mounts"]


class ControlFailed(OSError):
    """A command the daemon refused, or a control file that could not be used.

    errno is the number, errno_name its symbol ("ENOSPC"), message the daemon's text (or
    strerror when the daemon said nothing). str() gives "[Errno 28] message".
    """

    errno: int

    def __init__(self, errno_: int, message: str, *, errno_name: str | None = None) -> None:
        super().__init__(errno_, message)
        self.errno = errno_
        self.message = message
        self.errno_name = errno_name or errno_mod.errorcode.get(errno_, str(errno_))


class Transport(Protocol):
    """One ctl transaction: write data once, then read what the daemon answered.

    Returns (errno, reply): errno is None when the write succeeded, else the errno it
    failed with; reply is the raw reply line (b"" when none could be read). Raises
    OSError when no transaction could take place at all (ctl cannot be opened).
    """

    def transact(self, data: bytes) -> tuple[int | None, bytes]: ...


class CtlFile:
    """The real Transport: VIEW/.fusemount/ctl, one open file description per command.

    A fresh descriptor per command, because replies belong to the open file description
    (SPEC 4): sharing one would let a second command's reply replace the first's.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def transact(self, data: bytes) -> tuple[int | None, bytes]:
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                written = os.write(fd, data)
            except OSError as exc:
                # The refusal is in the errno; the reply only adds the message, if any.
                try:
                    return exc.errno, _read_line(fd)
                except OSError:
                    return exc.errno, b""
            if written != len(data):
                # The daemon took part of a command: what ran is unknown, so say so.
                raise OSError(errno_mod.EIO, f"short write to ctl ({written} of {len(data)})")
            return None, _read_line(fd)
        finally:
            os.close(fd)


def _read_line(fd: int) -> bytes:
    raw = b""
    while b"\n" not in raw and len(raw) < MAX_REPLY_BYTES:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        raw += chunk
    return raw.split(b"\n", 1)[0]


def parse_mounts(data: bytes, origin: str = "mounts.json") -> list[MountRecord]:
    """mounts.json bytes -> records; ControlFailed(EPROTO) naming origin if malformed."""
    try:
        decoded = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlFailed(PROTOCOL_ERRNO, f"{origin}: not JSON ({exc})") from None
    if not isinstance(decoded, list):
        raise ControlFailed(PROTOCOL_ERRNO, f"{origin}: not a JSON array")
    records: list[MountRecord] = []
    for index, item in enumerate(decoded):
        if not isinstance(item, dict):
            raise ControlFailed(PROTOCOL_ERRNO, f"{origin}: item {index} is not an object")
        try:
            records.append(MountRecord.from_json(item))
        except ValueError as exc:
            raise ControlFailed(PROTOCOL_ERRNO, f"{origin}: item {index}: {exc}") from None
    return records


class Client:
    """A view's control files. Every method is one system-call-level round trip, no retries.

    Every failure is a ControlFailed: a refused command carries the daemon's errno and
    message (SPEC 4 "Errors"); an unusable control file carries the system's errno with
    the path; a reply or file that breaks the protocol carries EPROTO.
    """

    def __init__(self, view: str | os.PathLike[str], *, transport: Transport | None = None) -> None:
        self.view = Path(view)
        self.control_dir = self.view / CONTROL_DIR
        self.transport: Transport = (
            transport if transport is not None else CtlFile(self.control_dir / "ctl")
        )

    # --- the ctl transaction ---------------------------------------------------------

    def command(self, text: str) -> Reply:
        """Send one ctl command, verbatim, and return its reply (`{"ok": true, ...}`).

        Raises ControlFailed with the reply's errno and message when the write fails
        (strerror of the write's errno when no reply can be read), with the open's errno
        when ctl cannot be opened, and with EPROTO when an accepted command's reply is
        not a JSON object: the command ran, but what it said is lost.
        """
        try:
            failed, raw = self.transport.transact(text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            if not isinstance(self.transport, CtlFile):
                code = exc.errno if exc.errno is not None else errno_mod.EIO
                raise ControlFailed(code, f"{self.control_dir / 'ctl'}: {_reason(exc)}") from None
            raise self._unusable(exc, self.control_dir / "ctl") from None
        reply = _decode(raw)
        if failed is not None:
            raise _refusal(failed, reply)
        if reply is None:
            raise ControlFailed(
                PROTOCOL_ERRNO, f"command accepted but its reply is not a JSON object: {raw!r:.80}"
            )
        if reply.get("ok") is False:
            # The write said yes and the reply says no: believe the refusal.
            raise _refusal(PROTOCOL_ERRNO, reply)
        if reply.get("ok") is not True:
            raise ControlFailed(
                PROTOCOL_ERRNO, f"command accepted but its reply lacks ok: {raw!r:.80}"
            )
        return reply

    def _send(self, verb: str, positionals: Sequence[str], flags: Sequence[str] = (),
              options: Sequence[tuple[str, str]] = ()) -> Reply:
        return self.command(protocol.render(verb, positionals, flags, options))

    # --- typed commands (SPEC 4 "Commands") -------------------------------------------

    def attach(
        self,
        name: str,
        source: str,
        *,
        ro: bool = False,
        owner: str | int | None = None,
        allow: Sequence[str] | None = None,
        holder: str | None = None,
        expire_s: float | None = None,
    ) -> Reply:
        """`attach NAME SOURCE ...`; the reply names dev, ino, mount_id and fstype."""
        return self._send("attach", [name, source], ["ro"] if ro else [],
                          _options(owner, allow, holder, expire_s))

    def mount(
        self,
        name: str,
        fstype: str,
        source: str,
        *,
        ro: bool = False,
        options: str | None = None,
        owner: str | int | None = None,
        allow: Sequence[str] | None = None,
        holder: str | None = None,
        expire_s: float | None = None,
    ) -> Reply:
        """`mount NAME FSTYPE SOURCE ...` (admins only); source is a path or "none"."""
        given = [("options", options)] if options is not None else []
        return self._send("mount", [name, fstype, source], ["ro"] if ro else [],
                          given + _options(owner, allow, holder, expire_s))

    def hold(self, name: str, holder: str) -> Reply:
        return self._send("hold", [name, holder])

    def release(self, name: str, holder: str) -> Reply:
        """Remove holder; the daemon detaches a holder-made subtree at its last release."""
        return self._send("release", [name, holder])

    def set(
        self,
        name: str,
        *,
        ro: bool | None = None,
        owner: str | int | None = None,
        allow: Sequence[str] | None = None,
        squash: Literal["root", "none"] | None = None,
    ) -> Reply:
        """`set NAME [ro|rw] [owner=] [allow=] [squash=]`: None leaves a setting alone,
        allow=[] clears; squash="root" makes root act as nobody inside the subtree."""
        options = _options(owner, allow, None, None)
        if squash is not None:
            if squash not in ("root", "none"):
                raise ValueError(f"squash must be 'root' or 'none', not {squash!r}")
            options.append(("squash", squash))
        return self._send("set", [name], [] if ro is None else ["ro" if ro else "rw"], options)

    def detach(self, name: str, *, force: bool = False) -> Reply:
        """`detach NAME [force]`; EBUSY while files are open unless force."""
        return self._send("detach", [name], ["force"] if force else [])

    # --- listings --------------------------------------------------------------------

    def mounts(self) -> list[MountRecord]:
        """The subtrees the caller may see, from mounts.json."""
        return parse_mounts(self.mounts_json(), str(self.control_dir / "mounts.json"))

    def mounts_json(self) -> bytes:
        """mounts.json as the daemon wrote it, unparsed."""
        return self._read("mounts.json")

    def mounts_text(self) -> str:
        """The `mounts` file: one line per subtree the caller may see."""
        return self._read("mounts").decode("utf-8", errors="replace")

    def metrics_text(self) -> str:
        """The `metrics` file (Prometheus text format; admins only, EACCES otherwise)."""
        return self._read("metrics").decode("utf-8", errors="replace")

    def version(self) -> str:
        """The daemon's version number, "X.Y.Z", from `version` ("fusemount X.Y.Z")."""
        path = self.control_dir / "version"
        text = self._read("version").decode("utf-8", errors="replace").strip()
        program, _, number = text.partition(" ")
        if program != "fusemount" or not number or " " in number:
            raise ControlFailed(
                PROTOCOL_ERRNO, f"{path}: expected 'fusemount X.Y.Z', got {text!r:.60}"
            )
        return number

    def _read(self, name: str) -> bytes:
        # Read to EOF, never by st_size: control files are direct I/O and stat as 0 bytes.
        path = self.control_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks: list[bytes] = []
                size = 0
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_LISTING_BYTES:
                        raise ControlFailed(
                            PROTOCOL_ERRNO, f"{path}: larger than {MAX_LISTING_BYTES} bytes"
                        )
            finally:
                os.close(fd)
        except ControlFailed:
            raise
        except OSError as exc:
            raise self._unusable(exc, path) from None
        return b"".join(chunks)

    def _unusable(self, exc: OSError, path: Path) -> ControlFailed:
        """A control file that could not be used; "not a fusemount view" when that is why."""
        code = exc.errno if exc.errno is not None else errno_mod.EIO
        if code in _NOT_A_VIEW_ERRNOS:
            problem = view_problem(self.view)
            if problem is not None:
                return ControlFailed(code, problem)
        return ControlFailed(code, f"{path}: {_reason(exc)}")


# What opening VIEW/.fusemount/FILE fails with when VIEW is not a live view.
_NOT_A_VIEW_ERRNOS = frozenset({errno_mod.ENOENT, errno_mod.ENOTDIR, errno_mod.ENOTCONN})
VIEW_FSTYPE = "fuse.fusemount"


def view_problem(view: str | os.PathLike[str]) -> str | None:
    """Why view is not a usable fusemount view, or None if it is one.

    Reads /proc/self/mountinfo only: never stats the view itself, which a dead daemon
    would answer with ENOTCONN and a hung one not at all.
    """
    real = _real_mount_point(view)
    fstype = _mount_type(real)
    if fstype == VIEW_FSTYPE:
        try:
            os.stat(os.path.join(real, CONTROL_DIR))
        except OSError as exc:
            if exc.errno == errno_mod.ENOTCONN:
                return (f"{view}: the fusemount view is not connected (its daemon is gone; "
                        "`fusemount serve` on it cleans it up)")
        return None
    if not os.path.isdir(real):
        return f"{view}: not a fusemount view (no such directory)"
    if fstype is None:
        return f"{view}: not a fusemount view (not a mount point)"
    return f"{view}: not a fusemount view (a {fstype} mount)"


def is_view_mount(view: str | os.PathLike[str]) -> bool:
    """True if a fusemount view (live or dead) is mounted on view, from mountinfo only."""
    return _mount_type(_real_mount_point(view)) == VIEW_FSTYPE


def _real_mount_point(view: str | os.PathLike[str]) -> str:
    # Symlinks resolved in the parent only: a stat of the view itself would reach its daemon,
    # which may be dead (ENOTCONN) or hung.
    path = os.path.abspath(view)
    parent, name = os.path.split(path)
    if not name:
        return path
    with contextlib.suppress(OSError):
        parent = os.path.realpath(parent)
    return os.path.join(parent, name)


def _mount_type(mount_point: str) -> str | None:
    """The type of the topmost mount on mount_point, or None if nothing is mounted there."""
    top = _topmost_mount(mount_point)
    return top[1] if top else None


def view_mount_id(view: str | os.PathLike[str]) -> int | None:
    """The mount id of the topmost mount on view (as /proc/PID/fdinfo shows it), or None;
    from mountinfo only, like is_view_mount."""
    top = _topmost_mount(_real_mount_point(view))
    return top[0] if top else None


def _topmost_mount(mount_point: str) -> tuple[int, str] | None:
    """(mount id, type) of the topmost mount on mount_point, or None."""
    found: tuple[int, str] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                head, _, tail = line.partition(" - ")
                fields = head.split()
                if len(fields) >= 5 and _unescape(fields[4]) == mount_point and tail:
                    # later lines are mounted on top of earlier ones
                    found = (int(fields[0]), tail.split()[0])
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _options(
    owner: str | int | None,
    allow: Sequence[str] | None,
    holder: str | None,
    expire_s: float | None,
) -> list[tuple[str, str]]:
    options: list[tuple[str, str]] = []
    if owner is not None:
        options.append(("owner", str(owner)))
    if allow is not None:
        options.append(("allow", _render_allow(allow)))
    if holder is not None:
        options.append(("holder", holder))
    if expire_s is not None:
        options.append(("expire", _render_seconds(expire_s)))
    return options


def _render_allow(allow: Sequence[str]) -> str:
    # A bare str is a Sequence[str] too; "alice:ro" would go out as "a,l,i,c,e,:,r,o".
    if isinstance(allow, str):
        raise TypeError(f"allow takes a list of entries such as ['alice:ro'], not {allow!r}")
    for entry in allow:
        # Quoting keeps words apart, not list items: a comma would smuggle in a grant.
        if not isinstance(entry, str) or "," in entry:
            raise ValueError(f"allow: bad entry {entry!r}: one USER:ro|rw, @GROUP:ro|rw or *:ro")
    return ",".join(allow)


def _render_seconds(seconds: float) -> str:
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expire_s must be a positive number of seconds, got {seconds!r}")
    return str(seconds) if isinstance(seconds, int) else repr(float(seconds))


def _decode(raw: bytes) -> Reply | None:
    """The reply line as a JSON object, or None if there is none or it is not one."""
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _refusal(failed: int, reply: Reply | None) -> ControlFailed:
    """The ControlFailed for a refused command: the reply's word first, the write's second."""
    if reply is None or reply.get("ok") is not False:
        return ControlFailed(failed, os.strerror(failed))
    name, message = reply.get("errno"), reply.get("message")
    code = _errno_named(name)
    text = message if isinstance(message, str) and message else os.strerror(code or failed)
    if code is None:
        return ControlFailed(failed, text)
    # Keep the daemon's spelling: EWOULDBLOCK and EAGAIN share a number.
    return ControlFailed(code, text, errno_name=str(name))


def _errno_named(name: object) -> int | None:
    if not isinstance(name, str) or not name.startswith("E"):
        return None
    code = getattr(errno_mod, name, None)
    return code if isinstance(code, int) else None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
