"""`attach` and `mount` judge SOURCE with the caller's own rights (SPEC 4; issue 12 items 8, 9).

attach: the caller must be able to reach SOURCE natively, with search permission on every
directory of the path (a self-service user's own directory inside a root-only 0700 directory
stays out of reach), still resolved once with no symlink. mount: an admin who is not root
mounts only a device or image they may read (and write, unless `ro`) natively, and
access.source_roots applies to mount sources that are paths. EACCES otherwise.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ctl import ctl_as
from tests.support.daemon import ViewFactory
from tests.support.mounts import make_ext4_image, release_loops
from tests.support.permissions import ADMINS_CONFIG, config, make_dir, self_service_config
from tests.support.users import Users

pytestmark = pytest.mark.needs_root


@pytest.mark.timeout(90)
def test_self_service_attach_of_own_directory_behind_a_0700_directory_is_eacces(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    alice = users.alice
    roots = make_dir(source / "homes", 0o755)
    locked = make_dir(roots / "locked", 0o700)
    hidden = make_dir(locked / "alices", 0o755, alice.uid, alice.gid)
    reachable = make_dir(roots / "open", 0o755, alice.uid, alice.gid)
    view = view_factory(config_text=self_service_config(roots, admins=True))
    reply = ctl_as(alice, view.path, f"attach mine {hidden}")
    assert reply.errno == errno.EACCES, reply.describe("attach mine")
    assert view.mounts_json() == []
    # Natively she cannot reach it either.
    assert subprocess.run(["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}",
                           "--init-groups", "stat", str(hidden)],
                          capture_output=True, check=False).returncode != 0
    assert ctl_as(alice, view.path, f"attach ok {reachable}").errno is None
    # Root may: it reaches every directory natively.
    view.ok(f"attach rootmade {hidden}")


@pytest.mark.timeout(90)
def test_admin_by_group_attach_needs_search_on_every_component(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    locked = make_dir(source / "locked", 0o700)
    inner = make_dir(locked / "inner", 0o755)
    view = view_factory(config_text=config())
    reply = ctl_as(users.dave, view.path, f"attach x {inner}")
    assert reply.errno == errno.EACCES, reply.describe("attach x")
    locked.chmod(0o711)  # search without read: enough to reach inner natively
    assert ctl_as(users.dave, view.path, f"attach x {inner}").errno is None


@pytest.fixture
def images(source: Path) -> Iterator[tuple[Path, Path]]:
    """A root-only 0600 ext4 image and a root-owned 0644 one, released at the end."""
    secret, public = source / "secret.img", source / "public.img"
    make_ext4_image(secret).chmod(0o600)
    make_ext4_image(public).chmod(0o644)
    yield secret, public
    release_loops(secret)
    release_loops(public)


@pytest.mark.timeout(120)
def test_mount_by_an_admin_by_group_needs_native_read_and_write_on_source(
    view_factory: ViewFactory, images: tuple[Path, Path], users: Users
) -> None:
    secret, public = images
    before = (os.stat(public).st_mtime_ns, os.stat(secret).st_mtime_ns)
    view = view_factory(config_text=ADMINS_CONFIG)
    dave = users.dave
    got = {
        "0600 ro": ctl_as(dave, view.path, f"mount a ext4 {secret} ro").errno_name,
        "0600 rw": ctl_as(dave, view.path, f"mount b ext4 {secret}").errno_name,
        "0644 rw": ctl_as(dave, view.path, f"mount c ext4 {public}").errno_name,
        "0644 ro": ctl_as(dave, view.path, f"mount d ext4 {public} ro").errno_name,
    }
    assert got == {"0600 ro": "EACCES", "0600 rw": "EACCES", "0644 rw": "EACCES",
                   "0644 ro": None}
    assert [r["name"] for r in view.mounts_json()] == ["d"]
    view.ok("detach d")
    view.ok(f"mount e ext4 {secret}")  # root may, as natively
    view.ok("detach e")
    assert os.stat(public).st_mtime_ns == before[0]


@pytest.mark.timeout(120)
def test_mount_source_paths_obey_source_roots(
    view_factory: ViewFactory, source: Path, images: tuple[Path, Path]
) -> None:
    _, public = images
    allowed = make_dir(source / "allowed", 0o755)
    inside = allowed / "in.img"
    os.link(public, inside)
    view = view_factory(config_text=f"[access]\nsource_roots = [{str(allowed)!r}]\n")
    assert view.err(f"mount x ext4 {public} ro") == errno.EACCES
    assert view.err(f"mount x ext4 {allowed}/../{public.name} ro") == errno.EACCES
    view.ok(f"mount y ext4 {inside} ro")
    view.ok("detach y")
    view.ok("mount t tmpfs none")  # `none` is no path: the roots do not apply


@pytest.mark.timeout(90)
def test_self_service_subtree_reached_through_a_supplementary_group_survives_restart(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    """At restart the walk is made as the owner would log in: primary and supplementary
    groups from the user and group databases."""
    bob = users.bob
    roots = make_dir(source / "homes", 0o755)
    team_only = make_dir(roots / "team", 0o710, 0, users.team.gid)
    mine = make_dir(team_only / "bobs", 0o755, bob.uid, bob.gid)
    # No admins by group here: a uid taken for a gid could otherwise pass for an admin.
    view = view_factory(config_text=self_service_config(roots))
    assert ctl_as(bob, view.path, f"attach mine {mine}").errno is None
    view.restart()
    assert [(r["name"], r["state"]) for r in view.mounts_json()] == [("mine", "attached")]
