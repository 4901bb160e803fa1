"""Every wrapper in fusemount.host.syscalls, exercised against the real kernel.

Runs as root on tmp directories (ext4 here); tmpfs mounts made by a test are detached fds
or are unmounted in `finally`. Threads stand in for the daemon's worker threads wherever a
call is per thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fusemount.host import syscalls as sc

T = TypeVar("T")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
CLONE_FLAGS = sc.OPEN_TREE_CLONE | sc.AT_RECURSIVE | sc.OPEN_TREE_CLOEXEC
OTHER_UID = 12345


@contextlib.contextmanager
def opened(path: Path | str, flags: int = O_PATH_DIR) -> Iterator[int]:
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def in_thread(fn: Callable[[], T]) -> T:
    """Run fn on a fresh thread (so per-thread credentials die with it) and return its result."""
    box: dict[str, T] = {}
    failure: list[BaseException] = []

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    if failure:
        raise failure[0]
    return box["result"]


def task_status(tid: int, field: str) -> list[str]:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.split()
    raise AssertionError(f"{field} missing from status of {tid}")


def errno_of(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno is not None
    return info.value.errno


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/{f ("data"), sub/g, lnk -> sub, flnk -> f} plus a sibling "outside"."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "f").write_bytes(b"data")
    (root / "sub" / "g").write_bytes(b"inner")
    (root / "lnk").symlink_to("sub")
    (root / "flnk").symlink_to("f")
    (tmp_path / "outside").write_bytes(b"secret")
    return root


@pytest.fixture
def root_fd(tree: Path) -> Iterator[int]:
    with opened(tree) as fd:
        yield fd


@pytest.fixture
def tmpfs_fd() -> Iterator[int]:
    """A detached 1 MiB tmpfs, nosuid,nodev; it vanishes when the fd is closed."""
    fs_fd = sc.fsopen("tmpfs")
    try:
        sc.fsconfig_set_string(fs_fd, "size", "1m")
        sc.fsconfig_create(fs_fd)
        mount_fd = sc.fsmount(fs_fd, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV)
    finally:
        os.close(fs_fd)
    try:
        yield mount_fd
    finally:
        os.close(mount_fd)


# ---------------------------------------------------------------------------- openat2


def test_openat2_opens_relative_to_dirfd(root_fd: int) -> None:
    fd = sc.openat2(root_fd, b"sub/g", os.O_RDONLY | os.O_CLOEXEC, resolve=sc.RESOLVE_BENEATH)
    try:
        assert os.read(fd, 16) == b"inner"
    finally:
        os.close(fd)


def test_openat2_accepts_str_paths(root_fd: int) -> None:
    fd = sc.openat2(root_fd, "f", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert os.read(fd, 16) == b"data"
    finally:
        os.close(fd)


def test_openat2_no_symlinks_refuses_symlink_component_with_eloop(root_fd: int) -> None:
    fd = sc.openat2(root_fd, b"lnk/g", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)  # the same path resolves without the flag
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    assert errno_of(lambda: sc.openat2(root_fd, b"lnk/g", flags, 0, sc.RESOLVE_NO_SYMLINKS)) == (
        errno.ELOOP
    )


def test_openat2_beneath_refuses_dotdot_escape_with_exdev(root_fd: int) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC
    fd = sc.openat2(root_fd, b"sub/../f", flags, resolve=sc.RESOLVE_BENEATH)
    os.close(fd)  # `..` that stays inside is fine
    assert errno_of(lambda: sc.openat2(root_fd, b"../outside", flags, 0, sc.RESOLVE_BENEATH)) == (
        errno.EXDEV
    )


def test_openat2_creates_with_requested_mode(tree: Path, root_fd: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    os.close(sc.openat2(root_fd, b"new", flags, 0o600, sc.RESOLVE_BENEATH))
    assert stat.S_IMODE((tree / "new").stat().st_mode) == 0o600


def test_openat2_missing_file_raises_filenotfounderror(root_fd: int) -> None:
    with pytest.raises(FileNotFoundError) as info:
        sc.openat2(root_fd, b"nope", os.O_RDONLY)
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == os.strerror(errno.ENOENT)


def test_openat2_mode_without_creat_is_einval(root_fd: int) -> None:
    assert errno_of(lambda: sc.openat2(root_fd, b"f", os.O_RDONLY, 0o644)) == errno.EINVAL


def test_openat2_struct_cache_stays_bounded(root_fd: int) -> None:
    for mode in range(300):
        os.close(sc.openat2(root_fd, b"f", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, mode))
    assert 0 < len(sc._open_how_cache) <= 256


# -------------------------------------------------------------------------- renameat2


def test_renameat2_noreplace_refuses_existing_target(tree: Path, root_fd: int) -> None:
    assert (
        errno_of(lambda: sc.renameat2(root_fd, b"f", root_fd, b"sub/g", sc.RENAME_NOREPLACE))
        == errno.EEXIST
    )
    assert (tree / "sub" / "g").read_bytes() == b"inner"
    sc.renameat2(root_fd, b"f", root_fd, b"moved", sc.RENAME_NOREPLACE)
    assert (tree / "moved").read_bytes() == b"data"
    assert not (tree / "f").exists()


def test_renameat2_exchange_swaps_both_names(tree: Path, root_fd: int) -> None:
    with opened(tree / "sub") as sub_fd:
        sc.renameat2(root_fd, b"f", sub_fd, "g", sc.RENAME_EXCHANGE)
    assert (tree / "f").read_bytes() == b"inner"
    assert (tree / "sub" / "g").read_bytes() == b"data"


def test_renameat2_exchange_with_missing_side_is_enoent(root_fd: int) -> None:
    assert (
        errno_of(lambda: sc.renameat2(root_fd, b"f", root_fd, b"missing", sc.RENAME_EXCHANGE))
        == errno.ENOENT
    )


def test_renameat2_noreplace_with_exchange_is_einval(root_fd: int) -> None:
    flags = sc.RENAME_NOREPLACE | sc.RENAME_EXCHANGE
    assert errno_of(lambda: sc.renameat2(root_fd, b"f", root_fd, b"x", flags)) == errno.EINVAL


# -------------------------------------------------------------------------- fchmodat2


def test_fchmodat2_changes_mode_through_opath_fd(tree: Path) -> None:
    with opened(tree / "f", os.O_PATH | os.O_CLOEXEC) as fd:
        with pytest.raises(OSError):
            os.chmod(fd, 0o604)  # the call fchmodat2 replaces: EBADF on O_PATH
        sc.fchmodat2(fd, b"", 0o604, sc.AT_EMPTY_PATH)
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o604


def test_fchmodat2_by_name_and_refuses_symlink(tree: Path, root_fd: int) -> None:
    sc.fchmodat2(root_fd, b"f", 0o640, sc.AT_SYMLINK_NOFOLLOW)
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o640
    assert (
        errno_of(lambda: sc.fchmodat2(root_fd, b"flnk", 0o600, sc.AT_SYMLINK_NOFOLLOW))
        == errno.EOPNOTSUPP
    )
    assert stat.S_IMODE((tree / "f").stat().st_mode) == 0o640


# ------------------------------------------------------------------------------ statx


def test_statx_identity_matches_os_stat(tree: Path, root_fd: int) -> None:
    for name in (b"f", b"sub", b"flnk"):
        result = sc.statx(root_fd, name, sc.AT_SYMLINK_NOFOLLOW)
        expected = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        assert (result.dev, result.ino, result.mode) == (
            expected.st_dev,
            expected.st_ino,
            expected.st_mode,
        )
    assert sc.statx(root_fd, b"", sc.AT_EMPTY_PATH).ino == tree.stat().st_ino


def test_statx_flags_mount_root_only_for_mount_roots(root_fd: int, tmpfs_fd: int) -> None:
    assert sc.statx(sc.AT_FDCWD, b"/", 0).is_mount_root
    assert not sc.statx(root_fd, b"", sc.AT_EMPTY_PATH).is_mount_root
    assert not sc.statx(root_fd, b"sub", 0).is_mount_root
    assert sc.statx(tmpfs_fd, b"", sc.AT_EMPTY_PATH).is_mount_root


def test_statx_mount_ids_old_in_mountinfo_unique_distinct(root_fd: int, tmpfs_fd: int) -> None:
    here = sc.statx(root_fd, b"", sc.AT_EMPTY_PATH)
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mountinfo_ids = {int(line.split()[0]) for line in mountinfo}
    assert here.mnt_id_old in mountinfo_ids
    # 6.18 numbers unique ids from 2**31 upwards, so they never collide with old ones.
    assert here.mnt_id >= 1 << 31
    other = sc.statx(tmpfs_fd, b"", sc.AT_EMPTY_PATH)
    assert other.mnt_id != here.mnt_id
    assert other.mnt_id_old != here.mnt_id_old


# ------------------------------------------------------------------- open_tree / mounts


@pytest.mark.timeout(30)
def test_open_tree_clone_does_not_show_mount_made_later(tree: Path) -> None:
    clone_fd = sc.open_tree(sc.AT_FDCWD, bytes(tree), CLONE_FLAGS)
    mounted = False
    try:
        clone = sc.statx(clone_fd, b"", sc.AT_EMPTY_PATH)
        assert clone.is_mount_root
        assert clone.mnt_id != sc.statx(sc.AT_FDCWD, bytes(tree), 0).mnt_id
        subprocess.run(["mount", "-t", "tmpfs", "fusemount-test", str(tree / "sub")], check=True)
        mounted = True
        (tree / "sub" / "marker").write_bytes(b"over")
        assert (tree / "sub" / "marker").exists()
        flags = os.O_RDONLY | os.O_CLOEXEC
        assert errno_of(lambda: sc.openat2(clone_fd, b"sub/marker", flags)) == errno.ENOENT
        fd = sc.openat2(clone_fd, b"sub/g", flags, 0, sc.RESOLVE_BENEATH | sc.RESOLVE_NO_XDEV)
        try:
            assert os.read(fd, 16) == b"inner"  # the clone still sees what was under it
        finally:
            os.close(fd)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(tree / "sub")], check=False)
        os.close(clone_fd)


def test_fsmount_tmpfs_honours_size_and_attrs(tmpfs_fd: int) -> None:
    vfs = os.statvfs(tmpfs_fd)
    assert vfs.f_blocks * vfs.f_frsize == 1 << 20
    assert vfs.f_flag & os.ST_NOSUID and vfs.f_flag & os.ST_NODEV
    fd = sc.openat2(tmpfs_fd, b"big", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    written = 0
    try:
        with pytest.raises(OSError) as info:
            while written <= 2 << 20:
                written += os.write(fd, b"x" * (256 << 10))
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC
    assert written <= 1 << 20


def test_mount_setattr_rdonly_gives_erofs_and_clears(tmpfs_fd: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    sc.mount_setattr(tmpfs_fd, b"", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, sc.MOUNT_ATTR_RDONLY)
    assert errno_of(lambda: sc.openat2(tmpfs_fd, b"f", flags, 0o600)) == errno.EROFS
    assert os.statvfs(tmpfs_fd).f_flag & os.ST_RDONLY
    sc.mount_setattr(tmpfs_fd, b"", sc.AT_EMPTY_PATH | sc.AT_RECURSIVE, 0, sc.MOUNT_ATTR_RDONLY)
    os.close(sc.openat2(tmpfs_fd, b"f", flags, 0o600))


def test_fsconfig_unknown_key_is_einval_and_fs_messages_explains() -> None:
    fs_fd = sc.fsopen("tmpfs")
    try:
        sc.fsconfig_set_flag(fs_fd, "noswap")
        assert errno_of(lambda: sc.fsconfig_set_string(fs_fd, "bogus", "1")) == errno.EINVAL
        assert errno_of(lambda: sc.fsconfig_set_flag(fs_fd, "bogusflag")) == errno.EINVAL
        messages = sc.fs_messages(fs_fd)
        assert any("bogus'" in m for m in messages)
        assert any("bogusflag" in m for m in messages)
        assert sc.fs_messages(fs_fd) == []
    finally:
        os.close(fs_fd)


def test_fs_messages_never_raises_on_a_bad_fd() -> None:
    with opened("/", os.O_RDONLY | os.O_DIRECTORY) as fd:
        assert sc.fs_messages(fd) == []  # EISDIR
    assert sc.fs_messages(-1) == []


def test_fsopen_unknown_type_is_enodev() -> None:
    assert errno_of(lambda: sc.fsopen("no-such-fs")) == errno.ENODEV


# ------------------------------------------------------------------------ credentials


@pytest.fixture
def shared_fd(tmp_path: Path) -> Iterator[int]:
    """A 1777 directory; callers reach it by fd, so the 0700 pytest parents do not matter."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with opened(shared) as fd:
        yield fd


def test_setfsuid_in_thread_creates_as_that_uid_main_unchanged(shared_fd: int) -> None:
    switched = threading.Event()
    checked = threading.Event()
    seen: list[int] = []

    def worker() -> None:
        previous = sc.setfsuid(OTHER_UID)
        try:
            os.close(os.open("mine", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=shared_fd))
            seen.extend((previous, sc.setfsuid(-1)))
        finally:
            switched.set()
            checked.wait(10)
            sc.setfsuid(previous)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert switched.wait(10)
        # While the worker still runs as OTHER_UID, this thread creates as root.
        assert task_status(threading.get_native_id(), "Uid")[3] == "0"
        os.close(os.open("root", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=shared_fd))
    finally:
        checked.set()
        thread.join(10)
    assert seen == [0, OTHER_UID]
    assert os.stat("mine", dir_fd=shared_fd).st_uid == OTHER_UID
    assert os.stat("root", dir_fd=shared_fd).st_uid == 0
    assert sc.setfsuid(-1) == 0


def test_setfsuid_thread_status_shows_fsuid() -> None:
    def worker() -> str:
        previous = sc.setfsuid(OTHER_UID)
        try:
            return task_status(threading.get_native_id(), "Uid")[3]
        finally:
            sc.setfsuid(previous)

    assert in_thread(worker) == str(OTHER_UID)
    assert task_status(threading.get_native_id(), "Uid")[3] == "0"


def test_setfsgid_in_thread_sets_group_of_new_file(shared_fd: int) -> None:
    def worker() -> int:
        previous = sc.setfsgid(OTHER_UID)
        try:
            os.close(os.open("g", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=shared_fd))
            return previous
        finally:
            sc.setfsgid(previous)

    assert in_thread(worker) == 0
    assert os.stat("g", dir_fd=shared_fd).st_gid == OTHER_UID
    assert sc.setfsgid(-1) == 0


def test_setgroups_thread_changes_only_calling_thread() -> None:
    main_groups = task_status(threading.get_native_id(), "Groups")

    def worker() -> tuple[list[str], list[str]]:
        sc.setgroups_thread([5000, 6000])
        mine = task_status(threading.get_native_id(), "Groups")
        return mine, task_status(threading.main_thread().native_id or 0, "Groups")

    mine, main_seen = in_thread(worker)
    assert mine == ["5000", "6000"]
    assert main_seen == main_groups
    assert task_status(threading.get_native_id(), "Groups") == main_groups


def test_setgroups_thread_grants_group_access(tmp_path: Path) -> None:
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    os.chown(group_dir, 0, 5000)
    group_dir.chmod(0o770)

    def create_as_other(groups: list[int]) -> int:
        with opened(group_dir) as dir_fd:
            sc.setgroups_thread(groups)
            previous = sc.setfsuid(OTHER_UID)
            try:
                name = f"by-{len(groups)}"
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dir_fd))
                return 0
            except OSError as exc:
                return exc.errno or -1
            finally:
                sc.setfsuid(previous)

    assert in_thread(lambda: create_as_other([5000])) == 0
    assert in_thread(lambda: create_as_other([])) == errno.EACCES
    assert (group_dir / "by-1").stat().st_uid == OTHER_UID


# ------------------------------------------------------------------------ file handles


def test_name_to_handle_round_trip_opens_same_file(tree: Path, root_fd: int) -> None:
    handle, mount_id = sc.name_to_handle_at(root_fd, b"f", 0)
    assert mount_id == sc.statx(root_fd, b"f", 0).mnt_id_old
    with opened(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) as mount_fd:
        fd = sc.open_by_handle_at(mount_fd, handle, os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert os.read(fd, 16) == b"data"
            assert os.fstat(fd).st_ino == (tree / "f").stat().st_ino
        finally:
            os.close(fd)


def test_name_to_handle_unique_mount_id_and_small_guess_retry(
    tmpfs_fd: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sc, "_handle_guess", 1)  # forces the EOVERFLOW path
    os.close(sc.openat2(tmpfs_fd, b"t", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    handle, unique = sc.name_to_handle_at(tmpfs_fd, b"t", sc.AT_HANDLE_MNT_ID_UNIQUE)
    assert len(handle) > 8 + 1
    assert unique == sc.statx(tmpfs_fd, b"", sc.AT_EMPTY_PATH).mnt_id
    mount_fd = sc.openat2(tmpfs_fd, b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sc.open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
        try:
            assert os.fstat(fd).st_ino == sc.statx(tmpfs_fd, b"t", 0).ino
        finally:
            os.close(fd)
    finally:
        os.close(mount_fd)


def test_name_to_handle_unsupported_fs_is_eopnotsupp() -> None:
    assert (
        errno_of(lambda: sc.name_to_handle_at(sc.AT_FDCWD, b"/proc/self/status", 0))
        == errno.EOPNOTSUPP
    )


def test_open_by_handle_after_unlink_is_estale(tree: Path, root_fd: int) -> None:
    handle, _ = sc.name_to_handle_at(root_fd, b"f", 0)
    (tree / "f").unlink()
    with opened(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) as mount_fd:
        assert errno_of(lambda: sc.open_by_handle_at(mount_fd, handle, os.O_RDONLY)) == (
            errno.ESTALE
        )


def test_open_by_handle_needs_non_opath_mount_fd(root_fd: int) -> None:
    handle, _ = sc.name_to_handle_at(root_fd, b"f", 0)
    assert errno_of(lambda: sc.open_by_handle_at(root_fd, handle, os.O_RDONLY)) == errno.EBADF


# -------------------------------------------------------------------- utimensat / fallocate


def test_utimensat_sets_nanoseconds_and_omit_keeps(tree: Path, root_fd: int) -> None:
    atime, mtime = 1_000_000_123_456_789, 1_500_000_000_987_654_321
    sc.utimensat(root_fd, b"f", atime, mtime, sc.AT_SYMLINK_NOFOLLOW)
    st = (tree / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    sc.utimensat(root_fd, b"f", None, 2_000_000_000_000_000_001, 0)
    st = (tree / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, 2_000_000_000_000_000_001)
    sc.utimensat(root_fd, b"f", 5, None, 0)
    st = (tree / "f").stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (5, 2_000_000_000_000_000_001)


def test_utimensat_now_on_opath_fd(tree: Path) -> None:
    with opened(tree / "f", os.O_PATH | os.O_CLOEXEC) as fd:
        sc.utimensat(fd, b"", 7, 7, sc.AT_EMPTY_PATH)
        before = time.time_ns()
        sc.utimensat(fd, b"", None, None, sc.AT_EMPTY_PATH, mtime_now=True)
    st = (tree / "f").stat()
    assert st.st_atime_ns == 7
    assert before - 1_000_000_000 <= st.st_mtime_ns <= time.time_ns() + 1_000_000_000


def test_utimensat_nofollow_changes_link_not_target(tree: Path, root_fd: int) -> None:
    target_before = (tree / "f").stat().st_mtime_ns
    sc.utimensat(root_fd, b"flnk", 42, 42, sc.AT_SYMLINK_NOFOLLOW, atime_now=True)
    assert (tree / "flnk").lstat().st_mtime_ns == 42
    assert (tree / "f").stat().st_mtime_ns == target_before


def test_fallocate_keep_size_allocates_without_growing(tree: Path) -> None:
    with opened(tree / "f", os.O_RDWR | os.O_CLOEXEC) as fd:
        before = os.fstat(fd)
        sc.fallocate(fd, sc.FALLOC_FL_KEEP_SIZE, 0, 4 << 20)
        after = os.fstat(fd)
        assert after.st_size == before.st_size == 4
        assert after.st_blocks * 512 >= 4 << 20
        sc.fallocate(fd, 0, 0, 8 << 20)
        assert os.fstat(fd).st_size == 8 << 20


def test_fallocate_punch_hole_zeroes_and_frees(tree: Path) -> None:
    with opened(tree / "f", os.O_RDWR | os.O_CLOEXEC) as fd:
        os.pwrite(fd, b"\xff" * (1 << 20), 0)
        os.fsync(fd)
        blocks = os.fstat(fd).st_blocks
        sc.fallocate(fd, sc.FALLOC_FL_PUNCH_HOLE | sc.FALLOC_FL_KEEP_SIZE, 4096, 512 << 10)
        assert os.fstat(fd).st_size == 1 << 20
        assert os.fstat(fd).st_blocks < blocks
        assert os.pread(fd, 512 << 10, 4096) == bytes(512 << 10)
        assert os.pread(fd, 4096, 0) == b"\xff" * 4096
        assert (
            errno_of(lambda: sc.fallocate(fd, sc.FALLOC_FL_PUNCH_HOLE, 0, 4096)) == errno.EOPNOTSUPP
        )


def test_fallocate_large_offset_is_passed_as_64_bits(tree: Path) -> None:
    with opened(tree / "f", os.O_RDWR | os.O_CLOEXEC) as fd:
        sc.fallocate(fd, sc.FALLOC_FL_KEEP_SIZE, (5 << 30) + 4096, 4096)
        assert os.fstat(fd).st_size == 4
        sc.fallocate(fd, 0, (5 << 30), 4096)
        assert os.fstat(fd).st_size == (5 << 30) + 4096
