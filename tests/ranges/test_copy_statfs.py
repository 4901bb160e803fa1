"""copy_file_range and statfs through the view, against the native answers (issue 14).

copy_file_range inside a subtree is done by the daemon on the source (the request counter
proves the kernel sent it, not a read/write fallback) and must give the native return
values, errnos and resulting files. Between two subtrees the caller gets what the sources
give natively: a copy, or EXDEV from which callers fall back. statfs of VIEW/NAME and
anything below it is the source's filesystem; the view root sums what the caller can see,
and a caller outside a subtree gets that sum for VIEW/NAME too, never the source's figures.
Serves SPEC 3 (statfs of the subtree's own filesystem) and issue 14 items 2 and 3.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle
from tests.support.pairs import Pair
from tests.support.ranges import FS_BYTES, KiB, Summary, attach_pair, describe, make_sparse
from tests.support.users import Users, py_as

pytestmark = [pytest.mark.needs_root, pytest.mark.timeout(60)]

# What a caller sees in statvfs(2) that FUSE carries (it has no fsid and no mount flags).
STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax")


def _errno_name(exc: OSError) -> str:
    return errno.errorcode[exc.errno or 0]


def copy_all(src: int, dst: int, off_in: int, off_out: int, length: int) -> list[int]:
    """copy_file_range until it returns 0 or length is done; the counts it returned."""
    counts = []
    while length > 0:
        done = os.copy_file_range(src, dst, length, off_in, off_out)
        counts.append(done)
        if done == 0:
            break
        off_in, off_out, length = off_in + done, off_out + done, length - done
    return counts


def copy_cases(src_dir: Path, dst_dir: Path) -> Summary:
    """The copy_file_range cases, their results, and the files they leave."""
    make_sparse(src_dir / "src")
    out: Summary = {}

    def case(name: str, fn: Callable[[], object]) -> None:
        try:
            out[name] = fn()
        except OSError as exc:
            out[name] = _errno_name(exc)

    src = os.open(src_dir / "src", os.O_RDONLY)
    dst = os.open(dst_dir / "whole", os.O_WRONLY | os.O_CREAT, 0o644)
    part = os.open(dst_dir / "part", os.O_RDWR | os.O_CREAT, 0o644)
    append = os.open(dst_dir / "append", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    src_rw = os.open(src_dir / "src", os.O_RDWR)
    try:
        case("whole", lambda: copy_all(src, dst, 0, 0, 1 << 20))
        case("offsets", lambda: copy_all(src, part, 100 * KiB, 50 * KiB, 300 * KiB))
        case("past_eof", lambda: os.copy_file_range(src, part, 4096, 2 << 20, 0))
        case("overlap_same_file", lambda: os.copy_file_range(src_rw, src_rw, 64 * KiB, 0, 4096))
        case("append_target", lambda: os.copy_file_range(src, append, 4096, 0, 0))
        case("write_only_source", lambda: os.copy_file_range(dst, part, 4096, 0, 0))
    finally:
        for fd in (src, dst, part, append, src_rw):
            os.close(fd)
    for name in ("whole", "part", "append"):
        out[f"file_{name}"] = describe(dst_dir / name)
    return out


def requests(view: ViewHandle, op: str) -> int:
    text = (view.path / ".fusemount" / "metrics").read_text()
    found = re.search(rf'^fusemount_requests_total{{op="{op}"}} (\d+)$', text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def test_copy_file_range_in_subtree_matches_native_issue_14(view: ViewHandle,
                                                            pair: Pair) -> None:
    native = copy_cases(pair.native, pair.native)
    before = requests(view, "copy_file_range")
    viewed = copy_cases(pair.view_dir, pair.view_dir)
    assert viewed == native
    assert requests(view, "copy_file_range") > before, "the kernel never asked the daemon"
    assert describe(pair.backing / "whole") == viewed["file_whole"]


def test_copy_file_range_between_subtrees_of_one_filesystem_issue_14(
        view: ViewHandle, pair: Pair, host_fs: tuple[str, Path]) -> None:
    other = attach_pair(view, host_fs)
    try:
        (pair.native.parent / "native2").mkdir()
        native = copy_cases(pair.native, pair.native.parent / "native2")
        viewed = copy_cases(pair.view_dir, other.view_dir)
        assert viewed == native
    finally:
        view.ok(f"detach {other.name}")


def test_copy_file_range_between_filesystems_copies_or_exdev_issue_14(
        view: ViewHandle, pair: Pair, source: Path) -> None:
    """A subtree on the test root's filesystem and one on host_fs: natively EXDEV; through
    the view the kernel's own fallback may turn that into a copy. Either way, no half copy."""
    name = "other_fs"
    view.ok(f"attach {name} {source}")
    try:
        make_sparse(pair.native / "src")
        src = os.open(pair.native / "src", os.O_RDONLY)
        dst = os.open(source / "native_dst", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with pytest.raises(OSError) as native_exc:
                os.copy_file_range(src, dst, 1 << 20, 0, 0)
            assert native_exc.value.errno == errno.EXDEV
        finally:
            os.close(src)
            os.close(dst)
        make_sparse(pair.view_dir / "src")
        src = os.open(pair.view_dir / "src", os.O_RDONLY)
        dst = os.open(view.path / name / "dst", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            counts: list[int] | str = copy_all(src, dst, 0, 0, 1 << 20)
        except OSError as exc:
            counts = _errno_name(exc)
        finally:
            os.close(src)
            os.close(dst)
        copied = (source / "dst").read_bytes()
        if counts == "EXDEV":
            assert copied == b""
        else:
            assert copied == (pair.backing / "src").read_bytes()
    finally:
        view.ok(f"detach {name}")


def statvfs_of(path: Path) -> dict[str, int]:
    st = os.statvfs(path)
    return {field: getattr(st, field) for field in STATVFS_FIELDS}


_FREE_FIELDS = ("f_bfree", "f_bavail", "f_ffree", "f_favail")


def assert_same_filesystem_figures(through_view: Path, native: Path, what: str) -> None:
    """statvfs through the view equals the native answer. Free counts of a filesystem that
    others write to (the root filesystem under /tmp, an ext4 finishing its lazy set-up) may
    move between two calls: the view's must lie within native answers taken just before and
    just after it; every other field must be equal."""
    before = statvfs_of(native)
    got = statvfs_of(through_view)
    after = statvfs_of(native)
    for field in STATVFS_FIELDS:
        low, high = sorted((before[field], after[field]))
        if field in _FREE_FIELDS:
            assert low <= got[field] <= high, (what, field, before[field], got[field],
                                               after[field])
        else:
            assert got[field] == before[field] == after[field], (what, field, got[field],
                                                                 before[field])


def test_statfs_under_subtree_is_the_sources_issue_14(
        view: ViewHandle, pair: Pair, source: Path, host_fs: tuple[str, Path]) -> None:
    view.ok(f"attach elsewhere {source}")  # a second filesystem the root's sum includes
    (pair.backing / "dir").mkdir()
    (pair.backing / "dir" / "file").write_bytes(b"x")
    for below in ("", "dir", "dir/file"):
        assert_same_filesystem_figures(pair.view_dir / below, pair.backing, below)
    assert_same_filesystem_figures(view.path / "elsewhere", source, "elsewhere")
    native = statvfs_of(pair.backing)
    # The issue's example: a 64 MiB tmpfs subtree reported the sum of every filesystem.
    total = native["f_blocks"] * native["f_frsize"]
    assert total <= FS_BYTES
    if host_fs[0] == "tmpfs":
        assert total == FS_BYTES
    view.ok("detach elsewhere")


def test_statfs_of_view_root_sums_visible_sources_issue_14(view: ViewHandle, pair: Pair,
                                                           source: Path) -> None:
    view.ok(f"attach elsewhere {source}")
    try:
        first, second = os.statvfs(pair.backing), os.statvfs(source)
        root = os.statvfs(view.path)
        assert root.f_frsize == 4096
        assert root.f_blocks == (first.f_blocks * first.f_frsize // 4096
                                 + second.f_blocks * second.f_frsize // 4096)
        assert root.f_files == first.f_files + second.f_files
        assert statvfs_of(view.path / ".fusemount") == statvfs_of(view.path)
    finally:
        view.ok("detach elsewhere")


def test_statfs_of_gate_for_outsider_is_not_the_sources_issue_14(
        view: ViewHandle, pair: Pair, users: Users) -> None:
    """Under the gate (SPEC 5) an outsider may name VIEW/NAME; without it, the name is
    missing. Either way it never learns the source's figures; once allowed, it does."""
    code = f"""
import errno, json, os
def s(p):
    try:
        st = os.statvfs(p)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return [st.f_blocks, st.f_bfree, st.f_files, st.f_ffree]
print(json.dumps([s({str(view.path)!r}), s({str(pair.view_dir)!r})]))
"""
    root, gate = _pair_of(py_as(users.carol, code))
    assert root == [0, 0, 0, 0]  # carol sees no subtree
    assert gate in (root, "ENOENT", "EACCES")
    view.ok(f"set {pair.name} allow={users.carol.name}:ro")
    _, gate = _pair_of(py_as(users.carol, code))
    native = os.statvfs(pair.backing)
    assert gate == [native.f_blocks, native.f_bfree, native.f_files, native.f_ffree]


def _pair_of(value: object) -> tuple[object, object]:
    assert isinstance(value, list) and len(value) == 2, value
    return value[0], value[1]


def test_statfs_of_daemon_mounted_tmpfs_is_its_size_issue_14(view: ViewHandle) -> None:
    """The issue's report: a 64 MiB tmpfs subtree said 258 GB, then ENOSPC at 64 MiB."""
    view.ok("mount small tmpfs none options=size=64m,mode=0755")
    try:
        before = os.statvfs(view.path / "small")
        assert before.f_blocks * before.f_frsize == 64 << 20
        with open(view.path / "small" / "f", "wb") as f:
            f.write(b"\0" * (8 << 20))
        after = os.statvfs(view.path / "small")
        assert (before.f_bfree - after.f_bfree) * after.f_frsize == 8 << 20
        (view.path / "small" / "f").unlink()
    finally:
        view.ok("detach small")
