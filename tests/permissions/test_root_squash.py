"""`set NAME squash=root`: root works in the subtree as nobody (65534); control unchanged.

Before the squash root reads alice's 0600 file (so the refusal after it is the squash's doing);
after it root is refused, what root creates belongs to nobody, and root still runs every
control command, including the one that lifts the squash.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.permissions.common import config, make_dir, make_file
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.users import Users

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
