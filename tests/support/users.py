"""Real unprivileged test users, and running code as them.

Job: create (or reuse) the users fmt_alice, fmt_bob, fmt_carol, fmt_dave and the groups
fmt_team (alice, bob) and fmt_admins (dave); run commands and Python snippets as one of them
with their real uid, gid and supplementary groups, so the kernel and the daemon see exactly
what a login of that user would present (SPEC 5).

Never: touch a user or group that a test session did not create (ours carry the GECOS marker
below), or remove the users while another test session on this machine still uses them.

How sharing works: several pytest sessions may run at once on one machine. Each session holds a
shared flock on a "usage" file for as long as it uses the users; creating and removing happen
under an exclusive "change" lock. At release a session removes the users only if it can then
take the usage lock exclusively, i.e. it is the last one out. Leftovers of a crashed session
carry the marker and are removed by the next session that is last out.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import json
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

MARKER = "fusemount test user"
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
SYSTEM_PYTHON = "/usr/bin/python3"
USER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Loaded before every py_as snippet. Stdlib only: it may run on the system Python.
PRELUDE = '''
import errno, json, os, stat, sys

def errno_of(fn):
    """0 if fn() succeeds, else the errno name of the OSError it raised ("EACCES")."""
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return 0

def ctl(view, command):
    """Write one command to VIEW/.fusemount/ctl and read the reply: [errno name or 0, raw]."""
    data = command.encode() if isinstance(command, str) else command
    fd = os.open(os.path.join(view, ".fusemount", "ctl"), os.O_RDWR)
    try:
        err = errno_of(lambda: os.write(fd, data))
        raw = b""
        while b"\\n" not in raw and len(raw) < 1 << 20:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(fd)
    return [err, raw.decode("utf-8", "replace")]
'''


@dataclass(frozen=True, slots=True)
class User:
    """A test user. groups are the supplementary gids, primary gid excluded (like Caller)."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    gid: int


@dataclass(frozen=True, slots=True)
class Users:
    """What the `users` fixture hands out."""

    alice: User
    bob: User
    carol: User
    dave: User
    team: Group  # alice and bob
    admins: Group  # dave

    def all(self) -> tuple[User, ...]:
        return (self.alice, self.bob, self.carol, self.dave)


class UserError(RuntimeError):
    """A user or group could not be created, or a snippet run as a user failed."""


def _run_root(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


class UserPool:
    """One session's claim on a set of test users named PREFIX + alice/bob/carol/dave.

    acquire() creates what is missing (idempotent) and returns the records; release() never
    raises and returns a list of problems (empty when all went well).
    """

    USER_NAMES = ("alice", "bob", "carol", "dave")

    def __init__(self, prefix: str = "fmt_") -> None:
        self.prefix = prefix
        self.team_name = prefix + "team"
        self.admins_name = prefix + "admins"
        # group name -> member user names (short names, without the prefix)
        self.memberships = {self.team_name: ("alice", "bob"), self.admins_name: ("dave",)}
        self._usage_fd: int | None = None

    def _lock_path(self, what: str) -> str:
        return str(LOCK_DIR / f"fusemount-test-users-{self.prefix}{what}.lock")

    def _full(self, short: str) -> str:
        return self.prefix + short

    def acquire(self) -> Users:
        if os.geteuid() != 0:
            raise UserError("creating test users needs root")
        if self._usage_fd is None:
            # Shared usage lock first, so a session that is finishing sees us before it removes.
            self._usage_fd = os.open(self._lock_path("usage"), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._usage_fd, fcntl.LOCK_SH)
        change_fd = os.open(self._lock_path("change"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(change_fd, fcntl.LOCK_EX)
            self._create_missing()
        finally:
            os.close(change_fd)
        return self._records()

    def _create_missing(self) -> None:
        for group in self.memberships:
            if not _group_exists(group):
                self._check(_run_root(["groupadd", group]), f"groupadd {group}")
        for short in self.USER_NAMES:
            name = self._full(short)
            if not _user_exists(name):
                self._check(
                    _run_root(
                        [
                            "useradd",
                            "--no-create-home",
                            "--user-group",
                            "--shell",
                            "/usr/sbin/nologin",
                            "--comment",
                            MARKER,
                            name,
                        ]
                    ),
                    f"useradd {name}",
                )
        for group, members in self.memberships.items():
            present = set(grp.getgrnam(group).gr_mem)
            for short in members:
                if self._full(short) not in present:
                    self._check(
                        _run_root(["gpasswd", "-a", self._full(short), group]),
                        f"gpasswd -a {self._full(short)} {group}",
                    )

    @staticmethod
    def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise UserError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")

    def _records(self) -> Users:
        def user(short: str) -> User:
            pw = pwd.getpwnam(self._full(short))
            supplementary = frozenset(
                g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem
            ) - {pw.pw_gid}
            return User(pw.pw_name, pw.pw_uid, pw.pw_gid, supplementary)

        def group(name: str) -> Group:
            return Group(name, grp.getgrnam(name).gr_gid)

        return Users(
            alice=user("alice"),
            bob=user("bob"),
            carol=user("carol"),
            dave=user("dave"),
            team=group(self.team_name),
            admins=group(self.admins_name),
        )

    def release(self) -> list[str]:
        """Give up this session's claim; remove the users if no other session uses them."""
        problems: list[str] = []
        if self._usage_fd is None:
            return problems
        try:
            change_fd = os.open(self._lock_path("change"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(change_fd, fcntl.LOCK_EX)
                fcntl.flock(self._usage_fd, fcntl.LOCK_UN)
                try:
                    fcntl.flock(self._usage_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return problems  # another session still uses them; the last one removes
                problems.extend(self._remove_ours())
            finally:
                os.close(change_fd)
        except OSError as exc:
            problems.append(f"releasing test users: {exc}")
        finally:
            os.close(self._usage_fd)
            self._usage_fd = None
        return problems

    def _remove_ours(self) -> list[str]:
        problems: list[str] = []
        ours = {self._full(short) for short in self.USER_NAMES}
        for name in sorted(ours):
            try:
                gecos = pwd.getpwnam(name).pw_gecos
            except KeyError:
                continue
            if gecos.split(",")[0] != MARKER:
                continue  # made by someone else: not ours to remove
            result = _run_root(["userdel", name])
            if result.returncode != 0:
                result = _run_root(["userdel", "--force", name])
            if result.returncode != 0:
                problems.append(f"userdel {name}: {result.stderr.strip()}")
            if _group_exists(name) and not grp.getgrnam(name).gr_mem:
                _run_root(["groupdel", name])
        for group in self.memberships:
            if _group_exists(group) and set(grp.getgrnam(group).gr_mem) <= ours:
                result = _run_root(["groupdel", group])
                if result.returncode != 0:
                    problems.append(f"groupdel {group}: {result.stderr.strip()}")
        return problems


def run_as(
    user: User,
    argv: list[str],
    *,
    umask: int | None = None,
    input: str | None = None,
    cwd: str | Path = "/",
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv as user (real and effective uid/gid, supplementary groups from /etc/group).

    Output is captured as text; the return code is not checked. The environment is a clean
    one (PATH, HOME=/, LANG, USER, LOGNAME) plus env; cwd defaults to "/" so that a directory
    only root may enter does not get in the way.
    """
    command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]
    if umask is not None:
        command += ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh"]
    environment = {
        "PATH": USER_PATH,
        "HOME": "/",
        "LANG": "C.UTF-8",
        "USER": user.name,
        "LOGNAME": user.name,
    }
    environment.update(env or {})
    return subprocess.run(
        command + argv,
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout_s,
        check=False,
    )


# Run by the user through a shell, so the exec itself is the user's (setpriv execs with root's
# path access still in force), and checking that the interpreter found its own stdlib: one that
# cannot read its prefix silently falls back to another Python's.
_PROBE = (
    "import os, sys; lib = os.path.dirname(os.__file__);"
    " sys.exit(0 if os.access(os.path.realpath(sys.executable), os.X_OK)"
    " and os.path.realpath(lib).startswith(os.path.realpath(sys.base_prefix)) else 1)"
)


@functools.cache
def _python_for(uid: int, gid: int) -> str:
    """This interpreter if the user may run it, else the system Python (snippets need stdlib).

    The venv's interpreter may be a link into a root-only home (pyenv under /root), so ask the
    kernel rather than guess from mode bits.
    """
    probe = User("probe", uid, gid, frozenset())
    argv = ["sh", "-c", 'exec "$@"', "sh", sys.executable, "-I", "-c", _PROBE]
    try:
        if run_as(probe, argv, timeout_s=30).returncode == 0:
            return sys.executable
    except (OSError, subprocess.TimeoutExpired):
        pass
    return SYSTEM_PYTHON


def py_as(user: User, code: str, umask: int | None = None, timeout_s: float = 60.0) -> object:
    """Run code (after PRELUDE) as user and return the JSON value on its last output line.

    Raises UserError with the snippet's stderr if it exits non-zero or prints no JSON.
    """
    python = _python_for(user.uid, user.gid)
    result = run_as(
        user, [python, "-I", "-c", PRELUDE + "\n" + code], umask=umask, timeout_s=timeout_s
    )
    if result.returncode != 0:
        raise UserError(
            f"snippet as {user.name} exited {result.returncode}:\n{code}\n--- stderr:\n"
            f"{result.stderr}"
        )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"snippet as {user.name} printed nothing:\n{code}")
    try:
        value: object = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise UserError(f"snippet as {user.name} printed no JSON ({exc}): {lines[-1]!r}") from exc
    return value


def listing_as(user: User, directory: Path) -> list[str]:
    """The names in directory as user lists them, sorted; fails the test if the listing does."""
    names = py_as(user, f"print(json.dumps(sorted(os.listdir({str(directory)!r}))))")
    assert isinstance(names, list), names
    return [str(n) for n in names]


class UserSteps:
    """A Python process of one user that runs step after step on request, keeping its cwd.

    Each step is the body of a function (after PRELUDE) returning a JSON object; `step()` runs
    the next one and returns its object. For what must hold across requests of one live
    process: a cwd inside the view, its caches, a grant changed between two steps. Use it as a
    context manager: leaving kills the process.
    """

    def __init__(self, user: User, cwd: Path, steps: list[str]) -> None:
        body = "\n".join(
            f"def step{i}():\n" + "\n".join("    " + line for line in s.strip().splitlines())
            for i, s in enumerate(steps)
        )
        code = (PRELUDE + "\n" + body + f"\nos.chdir({str(cwd)!r})\n"
                f"for i in range({len(steps)}):\n"
                "    sys.stdin.readline()\n"
                "    print(json.dumps(globals()['step%d' % i]()), flush=True)\n")
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--",
             SYSTEM_PYTHON, "-I", "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd="/",
        )

    def step(self) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"user process died: {err}")
        value = json.loads(line)
        assert isinstance(value, dict), line
        return value

    def __enter__(self) -> UserSteps:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
