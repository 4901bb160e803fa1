"""The pure mode decisions behind SPEC 3 special files: what counts as a kill-priv SETATTR,
and what access.deny_special_files refuses."""

from __future__ import annotations

import errno
import stat

import pytest

from fusemount.host.backing import kills_privileges, refuse_setid_on_file, refuse_special

REG = stat.S_IFREG


@pytest.mark.parametrize(("new", "old", "expected"), [
    (0o0777, 0o6777, True),   # both bits cleared by a non-owner's write
    (0o2767, 0o6767, True),   # set-user-ID cleared, set-group-ID kept (no group execute)
    (0o0755, 0o4755, True),
    (0o0755, 0o0755, False),  # nothing cleared: not a kill
    (0o0700, 0o4755, False),  # also clears permission bits: a chmod, not a kill
    (0o6755, 0o0755, False),  # adds bits
    (0o4755, 0o2755, False),  # swaps one bit for the other
])
def test_kills_privileges_only_for_pure_removal_of_setid_bits(
    new: int, old: int, expected: bool
) -> None:
    assert kills_privileges(REG | new, REG | old) is expected


def test_deny_special_files_refusals() -> None:
    for mode in (stat.S_IFCHR | 0o600, stat.S_IFBLK | 0o600, stat.S_IFCHR, REG | 0o4755,
                 0o2755):
        with pytest.raises(OSError) as caught:
            refuse_special(mode)
        assert caught.value.errno == errno.EPERM
    for mode in (stat.S_IFIFO | 0o600, stat.S_IFSOCK | 0o755, REG | 0o755):
        refuse_special(mode)
    refuse_setid_on_file(0o4755, stat.S_IFDIR | 0o755)  # directories keep their set-ID bits
