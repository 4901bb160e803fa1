"""Helpers the per-user permission tests share: config text, probes run as a user, checks.

Job: run a batch of named file operations as one real user and return each one's errno name
(0 for success), so a test can compare what the kernel answered natively with what it answered
through the view. Never: interpret or retry an answer; a snippet that cannot run is a test
error, not a denial. Serves the test side of SPEC 5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from tests.support.users import User, UserError, Users, py_as

ROOT = User("root", 0, 0, frozenset())

# access.admins with a group, so dave is an admin by group membership only (SPEC 5, 7).
ADMINS_CONFIG = '[access]\nadmins = ["root", "@fmt_admins"]\n'

# Loaded after users.PRELUDE in every probe: small file helpers the operation table names.
_HELPERS = '''
def read_file(p):
    with open(p, "rb") as f:
        return f.read()

def append_file(p):
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"w")
    finally:
        os.close(fd)

def create_file(p, mode=0o644):
    os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
'''

Outcome = str | int  # an errno name such as "EACCES", or 0 for success


def config(extra: str = "") -> str:
    """ADMINS_CONFIG plus more [access] keys (extra) and any further tables after them."""
    return ADMINS_CONFIG + extra


def self_service_config(roots: Path, per_user: int | None = None, admins: bool = False) -> str:
    """Config text with self service under roots (SPEC 5): with ADMINS_CONFIG's admins if
    asked, and a [limits] max_subtrees_per_user = per_user if given."""
    text = (ADMINS_CONFIG if admins else "[access]\n") + (
        f"self_service = true\nself_service_roots = [{str(roots)!r}]\n")
    if per_user is not None:
        text += f"[limits]\nmax_subtrees_per_user = {per_user}\n"
    return text


def probe(user: User, ops: Mapping[str, str], umask: int | None = None) -> dict[str, Outcome]:
    """Run each Python expression in ops as user, in order; return name -> errno name or 0.

    Expressions may use os, stat, json and read_file/append_file/create_file.
    """
    lines = [_HELPERS, "out = {}"]
    for name, expr in ops.items():
        lines.append(f"out[{name!r}] = errno_of(lambda: {expr})")
    lines.append("print(json.dumps(out))")
    return _outcomes(py_as(user, "\n".join(lines), umask=umask), user)


def probe_many(user: User, code: str, umask: int | None = None) -> dict[str, dict[str, Outcome]]:
    """Run code (which must print a JSON object of objects of outcomes) as user."""
    value = py_as(user, _HELPERS + "\n" + code, umask=umask)
    if not isinstance(value, dict):
        raise UserError(f"probe as {user.name}: expected an object, got {value!r}")
    return {str(k): _outcomes(v, user) for k, v in value.items()}


def _outcomes(value: object, user: User) -> dict[str, Outcome]:
    if not isinstance(value, dict):
        raise UserError(f"probe as {user.name}: expected an object, got {value!r}")
    out: dict[str, Outcome] = {}
    for key, item in value.items():
        if not isinstance(item, str | int) or isinstance(item, bool):
            raise UserError(f"probe as {user.name}: {key}: not an outcome: {item!r}")
        out[str(key)] = item
    return out


def read_json_as(user: User, path: Path) -> Outcome | list[object]:
    """The JSON array in path as user reads it, or the errno name the read failed with."""
    code = (
        "try:\n"
        f"    data = json.loads(read_file({str(path)!r}))\n"
        "except OSError as exc:\n"
        "    data = errno.errorcode.get(exc.errno, str(exc.errno))\n"
        "print(json.dumps(data))"
    )
    value = py_as(user, _HELPERS + "\n" + code)
    if isinstance(value, str | list):
        return value
    raise UserError(f"reading {path} as {user.name}: unexpected {value!r}")


def read_text_as(user: User, path: Path) -> str:
    """The text of path as user reads it, or the errno name (prefixed "!") of the failure."""
    code = (
        "try:\n"
        f"    data = read_file({str(path)!r}).decode()\n"
        "except OSError as exc:\n"
        "    data = '!' + errno.errorcode.get(exc.errno, str(exc.errno))\n"
        "print(json.dumps(data))"
    )
    value = py_as(user, _HELPERS + "\n" + code)
    if isinstance(value, str):
        return value
    raise UserError(f"reading {path} as {user.name}: unexpected {value!r}")


def listdir_as(user: User, path: Path) -> list[str] | str:
    """Sorted names in path as user lists them, or the errno name of the failure."""
    code = (
        "try:\n"
        f"    data = sorted(os.listdir({str(path)!r}))\n"
        "except OSError as exc:\n"
        "    data = errno.errorcode.get(exc.errno, str(exc.errno))\n"
        "print(json.dumps(data))"
    )
    value = py_as(user, code)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise UserError(f"listing {path} as {user.name}: unexpected {value!r}")


def make_dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    """mkdir with an exact mode (chmod after mkdir: the umask must not decide) and owner."""
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def make_file(path: Path, mode: int, uid: int = 0, gid: int = 0, text: str = "data\n") -> Path:
    path.write_text(text)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def everyone(users: Users) -> tuple[User, ...]:
    """root, the admin by group, and the three ordinary users, in a stable order."""
    return (ROOT, users.dave, users.alice, users.bob, users.carol)


def dump(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
