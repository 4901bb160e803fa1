"""Client side of the control files, for tests (SPEC 4).

Job: send one command through VIEW/.fusemount/ctl exactly as a script would (one write on an
O_RDWR descriptor, then a read of the reply on the same descriptor), and read `mounts` and
`mounts.json`. Never: retry, reinterpret or repair what the daemon answered; a reply that is not
one line of JSON is a daemon bug and fails loudly.
"""

from __future__ import annotations

import errno as errno_mod
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.users import User, UserError, py_as

MAX_REPLY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    """What one command got back. errno is None when the write succeeded."""

    errno: int | None
    data: dict[str, object]
    raw: bytes

    @property
    def errno_name(self) -> str | None:
        return None if self.errno is None else errno_mod.errorcode.get(self.errno, str(self.errno))

    @property
    def answer(self) -> str:
        """"ok", or the errno name of a refusal, when the write's outcome and the reply line
        agree (SPEC 4); else what disagreed."""
        ok = self.data.get("ok")
        if self.errno is None and ok is True:
            return "ok"
        if self.errno is not None and ok is False and self.data.get("errno") == self.errno_name:
            return str(self.errno_name)
        return f"write {self.errno_name or 'succeeded'} but reply {self.raw!r}"

    def describe(self, command: str | bytes) -> str:
        status = "ok" if self.errno is None else f"write failed with {self.errno_name}"
        return f"ctl {command!r}: {status}; reply {self.raw!r}"


def _parse(raw: bytes, command: str | bytes) -> dict[str, object]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AssertionError(f"ctl {command!r}: reply is not JSON ({exc}): {raw!r}") from exc
    if not isinstance(data, dict):
        raise AssertionError(f"ctl {command!r}: reply is not a JSON object: {raw!r}")
    return data


def _read_reply(fd: int) -> bytes:
    raw = b""
    while b"\n" not in raw and len(raw) < MAX_REPLY_BYTES:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        raw += chunk
    return raw.split(b"\n", 1)[0]


def ctl(view: Path, command: str | bytes) -> Reply:
    """Write command (sent byte for byte: no newline added) and read the reply line."""
    data = command.encode() if isinstance(command, str) else command
    fd = os.open(view / ".fusemount" / "ctl", os.O_RDWR)
    try:
        failed: int | None = None
        try:
            written = os.write(fd, data)
        except OSError as exc:
            failed = exc.errno
        else:
            if written != len(data):
                raise AssertionError(f"ctl {command!r}: short write {written} of {len(data)}")
        try:
            raw = _read_reply(fd)
        except OSError as exc:
            raise AssertionError(f"ctl {command!r}: reading the reply failed: {exc}") from exc
    finally:
        os.close(fd)
    return Reply(failed, _parse(raw, command), raw)


def ctl_ok(view: Path, command: str | bytes) -> dict[str, object]:
    """Run command and return its reply; fail the test unless it succeeded with ok: true."""
    reply = ctl(view, command)
    if reply.errno is not None or reply.data.get("ok") is not True:
        raise AssertionError("expected success: " + reply.describe(command))
    return reply.data


def ctl_err(view: Path, command: str | bytes) -> int:
    """Run command and return the errno its write failed with; fail the test if it succeeded.

    Also checks that the reply agrees: ok false and the same errno name.
    """
    reply = ctl(view, command)
    if reply.errno is None:
        raise AssertionError("expected the write to fail: " + reply.describe(command))
    if reply.data and (
        reply.data.get("ok") is not False or reply.data.get("errno") != reply.errno_name
    ):
        raise AssertionError("reply disagrees with the write's errno: " + reply.describe(command))
    return reply.errno


def ctl_as(user: User, view: Path, command: str) -> Reply:
    """ctl() run by user in a subprocess, so the daemon sees that user's credentials."""
    result = py_as(user, f"print(json.dumps(ctl({str(view)!r}, {command!r})))")
    if not (isinstance(result, list) and len(result) == 2 and isinstance(result[1], str)):
        raise UserError(f"ctl as {user.name}: unexpected snippet result {result!r}")
    name, text = result
    raw = text.encode().split(b"\n", 1)[0]
    if name == 0:
        return Reply(None, _parse(raw, command), raw)
    code = getattr(errno_mod, str(name), None)
    if not isinstance(code, int):
        raise UserError(f"ctl as {user.name}: unknown errno {name!r}")
    return Reply(code, _parse(raw, command), raw)


def unexpected_answers(
    view: Path, user: User, expected: Mapping[str, Collection[str]]
) -> dict[str, str]:
    """Run each command as user (root: directly), in order; return the commands whose answer
    (Reply.answer) is not one of the expected ones, each with what it got."""
    wrong = {}
    for command, allowed in expected.items():
        reply = ctl(view, command) if user.uid == 0 else ctl_as(user, view, command)
        if reply.answer not in allowed:
            wrong[command] = f"{reply.answer} (want {'/'.join(sorted(allowed))})"
    return wrong


def mounts(view: Path) -> list[str]:
    """The lines of VIEW/.fusemount/mounts as root sees them."""
    return (view / ".fusemount" / "mounts").read_text().splitlines()


def mounts_json(view: Path) -> list[dict[str, object]]:
    """VIEW/.fusemount/mounts.json as root sees it; fails unless it is an array of objects."""
    data = json.loads((view / ".fusemount" / "mounts.json").read_bytes())
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise AssertionError(f"mounts.json is not an array of objects: {data!r}")
    return data
