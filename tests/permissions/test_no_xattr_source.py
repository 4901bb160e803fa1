"""A source without xattr support (ramfs) works for every user (issue 12 item 13).

The kernel asks the view for system.posix_acl_access before deciding a non-root access; a
source with no xattrs at all answers EOPNOTSUPP, which must reach the kernel as "no ACL"
(ENODATA), so the mode bits decide as natively. Differential: alice's answers on a native
ramfs and through the view of another ramfs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory
from tests.support.escape import mounted
from tests.support.permissions import config
from tests.support.users import Users, py_as

pytestmark = pytest.mark.needs_root

_SCRIPT = r'''
out = {}
f = BASE + "/mine"
out["create"] = errno_of(lambda: os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o640)))
def write():
    with open(f, "w") as h:
        h.write("hello")
out["write"] = errno_of(write)
out["read"] = errno_of(lambda: open(f).read())
out["stat"] = errno_of(lambda: os.stat(f))
out["mkdir"] = errno_of(lambda: os.mkdir(BASE + "/d", 0o750))
out["list"] = sorted(os.listdir(BASE))
out["read root's 0600"] = errno_of(lambda: open(BASE + "/roots").read())
out["acl"] = errno_of(lambda: os.getxattr(f, "system.posix_acl_access"))
print(json.dumps(out))
'''


@pytest.mark.timeout(60)
def test_ramfs_source_is_usable_by_a_user_with_mode_bits_deciding(
    view_factory: ViewFactory, source: Path, users: Users
) -> None:
    native, backing = source / "native", source / "backing"
    native.mkdir()
    backing.mkdir()
    with mounted(["-t", "ramfs", "none"], native), mounted(["-t", "ramfs", "none"], backing):
        for d in (native, backing):
            d.chmod(0o777)
            (d / "roots").write_text("root only\n")
            (d / "roots").chmod(0o600)
        view = view_factory(config_text=config())
        view.ok(f"attach ram {backing} allow={users.alice.name}:rw")
        want = py_as(users.alice, f"BASE = {str(native)!r}\n" + _SCRIPT)
        got = py_as(users.alice, f"BASE = {str(view.path / 'ram')!r}\n" + _SCRIPT)
        assert isinstance(want, dict) and isinstance(got, dict) and want["create"] == 0
        # The one known difference: the view cannot tell the kernel's own ACL query from a
        # user's getxattr, so both get "no ACL" where ramfs says "no xattrs at all".
        assert (want.pop("acl"), got.pop("acl")) == ("ENOTSUP", "ENODATA")
        assert got == want
        view.ok("detach ram")
