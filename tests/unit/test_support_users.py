"""The test-user helpers themselves: real users exist, commands run with their credentials,
py_as reports errnos by name, and a pool removes the users it created."""

from __future__ import annotations

import grp
import pwd
from pathlib import Path

import pytest

from tests.support.users import UserPool, Users, py_as, run_as

pytestmark = pytest.mark.needs_root


def test_run_as_id_shows_alice_credentials(users: Users) -> None:
    alice = users.alice
    result = run_as(alice, ["id", "-u"])
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == alice.uid != 0
    groups = run_as(alice, ["id", "-G"])
    assert {int(g) for g in groups.stdout.split()} == {alice.gid, users.team.gid}


def test_users_have_the_documented_groups(users: Users) -> None:
    assert users.team.gid in users.alice.groups
    assert users.team.gid in users.bob.groups
    assert users.team.gid not in users.carol.groups
    assert users.admins.gid in users.dave.groups
    assert users.admins.gid not in users.alice.groups
    assert len({u.uid for u in users.all()}) == 4


def test_py_as_returns_errno_names(users: Users, test_root: Path) -> None:
    secret = test_root / "secret-for-py-as"
    secret.write_text("root only")
    secret.chmod(0o600)
    public = test_root / "public-for-py-as"
    public.write_text("anyone")
    public.chmod(0o644)
    try:
        code = (
            f"print(json.dumps([errno_of(lambda: open({str(secret)!r}).read()),"
            f" errno_of(lambda: open({str(public)!r}).read()),"
            f" errno_of(lambda: os.stat({str(test_root / 'missing')!r}))]))"
        )
        assert py_as(users.alice, code) == ["EACCES", 0, "ENOENT"]
    finally:
        secret.unlink()
        public.unlink()


def test_py_as_applies_umask_and_identity(users: Users) -> None:
    code = "print(json.dumps([os.umask(0), os.getuid(), os.geteuid(), sorted(os.getgroups())]))"
    result = py_as(users.bob, code, umask=0o027)
    assert result == [0o027, users.bob.uid, users.bob.uid, sorted({users.bob.gid, users.team.gid})]


def test_user_pool_creates_and_removes_its_users() -> None:
    pool = UserPool(prefix="fmtx_")
    try:
        made = pool.acquire()
        assert pwd.getpwnam("fmtx_carol").pw_uid == made.carol.uid
        assert pwd.getpwnam("fmtx_carol").pw_shell == "/usr/sbin/nologin"
        assert set(grp.getgrnam("fmtx_team").gr_mem) == {"fmtx_alice", "fmtx_bob"}
        again = pool.acquire()  # idempotent: reuses what exists
        assert again == made
        assert run_as(made.carol, ["id", "-un"]).stdout.strip() == "fmtx_carol"
    finally:
        problems = pool.release()
    assert problems == []
    for name in ("fmtx_alice", "fmtx_bob", "fmtx_carol", "fmtx_dave"):
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
    for group in ("fmtx_team", "fmtx_admins", "fmtx_alice"):
        with pytest.raises(KeyError):
            grp.getgrnam(group)
