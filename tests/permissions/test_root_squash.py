"""`set NAME squash=root`: root works in the subtree as nobody (65534); control unchanged.

A squashed root is nobody everywhere (lookup, getattr, readlink, link, xattrs), as natively
for nobody; and a real user whose uid is 65534 is an ordinary user (issue 12 items 10, 12).

Before the squash root reads alice's 0600 file (so the refusal after it is the squash's doing);
after it root is refused, what root creates belongs to nobody, and root still runs every
control command, including the one that lifts the squash.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.permissions import ROOT, config, make_dir, make_file
from tests.support.users import User, Users, py_as

pytestmark = pytest.mark.needs_root

NOBODY = 65534


def _squashed(view_factory: ViewFactory, source: Path, users: Users) -> tuple[ViewHandle, Path]:
    alice = users.alice
    src = make_dir(source / "src", 0o777)
    make_file(src / "secret", 0o600, alice.uid, alice.gid, text="alice only\n")
    make_file(src / "public", 0o644, alice.uid, alice.gid, text="anyone\n")
    view = view_factory(config_text=config())
    view.ok(f"attach sq {src} owner={alice.name}")
    assert (view.path / "sq" / "secret").read_text() == "alice only\n"
    view.ok("set sq squash=root")
    return view, src


@pytest.mark.timeout(60)
def test_root_squash_root_cannot_read_alices_private_file(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, _ = _squashed(view_factory, source, users)
    with pytest.raises(PermissionError) as caught:
        (view.path / "sq" / "secret").read_bytes()
    assert caught.value.errno == errno.EACCES
    assert (view.path / "sq" / "public").read_text() == "anyone\n"  # as nobody may


@pytest.mark.timeout(60)
def test_root_squash_root_creations_belong_to_nobody(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, src = _squashed(view_factory, source, users)
    inside = view.path / "sq"
    (inside / "by-root").write_text("x")
    (inside / "dir-by-root").mkdir()
    os.symlink("by-root", inside / "link-by-root")
    os.mkfifo(inside / "fifo-by-root")
    for name in ("by-root", "dir-by-root", "link-by-root", "fifo-by-root"):
        st = os.lstat(src / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name


@pytest.mark.timeout(60)
def test_root_squash_root_keeps_no_privilege_over_others_files(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """As nobody, root cannot chmod, chown or remove-by-override what is not nobody's."""
    view, src = _squashed(view_factory, source, users)
    inside = view.path / "sq"
    for attempt in (
        lambda: os.chmod(inside / "public", 0o666),
        lambda: os.chown(inside / "public", 0, 0),
        lambda: (inside / "public").write_text("overwritten"),
    ):
        with pytest.raises(PermissionError):
            attempt()
    st = os.lstat(src / "public")
    assert (st.st_uid, st.st_mode & 0o777) == (users.alice.uid, 0o644)
    assert (src / "public").read_text() == "anyone\n"


@pytest.mark.timeout(60)
def test_root_squash_control_plane_unchanged(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    view, _ = _squashed(view_factory, source, users)
    view.ok("hold sq h1")
    view.ok("release sq h1")
    view.ok(f"set sq allow={users.bob.name}:ro")
    assert b"fusemount_" in (view.path / ".fusemount" / "metrics").read_bytes()
    assert [r["name"] for r in view.mounts_json()] == ["sq"]
    assert "sq" in os.listdir(view.path)
    view.ok("set sq squash=none")
    assert (view.path / "sq" / "secret").read_text() == "alice only\n"
    other = make_dir(source / "other", 0o755)
    view.ok(f"attach other {other}")
    view.ok("detach other")
    view.ok("detach sq")
    assert view.mounts_json() == []


# Runs as the prober with BASE set: what a caller meets in alice's private places.
_NOBODY_SCRIPT = r'''
out = {}
def stat_of(p):
    st = os.lstat(p)
    return [st.st_uid, oct(st.st_mode)]
out["stat in 0700 dir"] = errno_of(lambda: stat_of(BASE + "/priv/f"))
out["list 0700 dir"] = errno_of(lambda: os.listdir(BASE + "/priv"))
out["readlink in 0700 dir"] = errno_of(lambda: os.readlink(BASE + "/priv/lnk"))
out["getxattr of 0600 file"] = errno_of(lambda: os.getxattr(BASE + "/closed", "user.k"))
out["setxattr of 0600 file"] = errno_of(lambda: os.setxattr(BASE + "/closed", "user.n", b"v"))
out["hard link of 0600 file"] = errno_of(lambda: os.link(BASE + "/closed", BASE + "/hl"))
out["read 0644 file"] = errno_of(lambda: open(BASE + "/open").read())
print(json.dumps(out))
'''


def _private_tree(root: Path, users: Users) -> Path:
    alice = users.alice
    top = make_dir(root, 0o777, alice.uid, alice.gid)
    priv = make_dir(top / "priv", 0o700, alice.uid, alice.gid)
    make_file(priv / "f", 0o600, alice.uid, alice.gid)
    os.symlink("secret-target", priv / "lnk")
    closed = make_file(top / "closed", 0o600, alice.uid, alice.gid)
    os.setxattr(closed, "user.k", b"secret")
    make_file(top / "open", 0o644, alice.uid, alice.gid)
    return top


@pytest.mark.timeout(60)
def test_root_squash_root_is_nobody_for_lookup_getattr_readlink_link_and_xattrs(
    view_factory: ViewFactory, source: Path, test_root: Path, users: Users
) -> None:
    """Differential: a squashed root through the view meets what nobody meets natively."""
    native = _private_tree(source / "native", users)
    src = _private_tree(source / "src", users)
    view = view_factory(config_text=config())
    view.ok(f"attach sq {src} owner={users.alice.name}")
    view.ok("set sq squash=root")
    nobody = User("nobody", NOBODY, NOBODY, frozenset())
    want = py_as(nobody, f"BASE = {str(native)!r}\n" + _NOBODY_SCRIPT)
    got = py_as(ROOT, f"BASE = {str(view.path / 'sq')!r}\n" + _NOBODY_SCRIPT)
    assert got == want
    assert isinstance(want, dict) and want["stat in 0700 dir"] == "EACCES"
    assert not (src / "hl").exists()


@pytest.mark.timeout(60)
def test_real_uid_65534_user_is_not_taken_for_a_squashed_root(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """uid 65534 is a real user here (nobody): touch on a file it may write works, as natively."""
    alice = users.alice
    src = make_dir(source / "src", 0o777, alice.uid, alice.gid)
    shared = make_file(src / "shared", 0o666, alice.uid, alice.gid)
    os.utime(shared, ns=(1_000_000_000, 1_000_000_000))
    view = view_factory(config_text=config())
    view.ok(f"attach pub {src} owner={alice.name} allow={NOBODY}:rw")
    nobody = User("nobody", NOBODY, NOBODY, frozenset())
    target = str(view.path / "pub" / "shared")
    got = py_as(nobody, f"""
print(json.dumps({{
    "touch": errno_of(lambda: os.utime({target!r})),
    "explicit times": errno_of(lambda: os.utime({target!r}, ns=(5, 5))),
}}))
""")
    # Natively: UTIME_NOW needs write access, explicit times need ownership.
    assert got == {"touch": 0, "explicit times": "EPERM"}
    assert os.stat(shared).st_mtime_ns > 1_000_000_000
