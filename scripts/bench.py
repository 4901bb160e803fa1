#!/usr/bin/env python3
"""Benchmark: the same workloads natively, through a fusemount view and through bindfs.

`make bench`. Every workload runs in rounds interleaved across targets (native, fusemount,
bindfs, native, ...) on one backing filesystem; the medians and their ratios to native go to
stdout as a Markdown table and to bench-results/ as JSON (optionally a PNG chart).

It must never be part of the test suite (timings depend on the machine), and it must never
leave a mount, a daemon or a scratch directory behind: every target is stopped in `finally`,
and the scratch directory is removed only once nothing is mounted under it.

Two fusemount columns: `fusemount` in the default gate mode and `fusemount_hidden` with
`access.hide_names = true` (one request per walk through the view root, SPEC 5). Both run with
`[performance] busy_poll` off, as shipped, unless `--busy-poll`; a held CPU latency request
would speed up every target, so the peers are measured under the same setting.

Paths are equally deep: every target's workloads run in a directory named `bench` one level
below the scratch directory (native/bench, view-fusemount/bench = VIEW/NAME, bindfs/bench =
its mount point), as a managed mount at /mnt/NAME and the view's /view/NAME would be, so an
absolute-path row compares the cost of each component, not the number of components.

It measures the price of SPEC 1 (every operation proxied through descriptors the daemon holds)
and checks no behaviour beyond "the bytes and entries came back".

Noise: on the project VM the kernel cost of an ext4 create varies ten-fold with the block group
the inode lands in, so create-style rows need several rounds before a ratio means anything.

Adding a workload: write `def wl_x(directory: Path, p: Params) -> float` that times itself
(untimed set-up before the clock may use the `_ensure_*` fixtures) and append a `Workload`
to WORKLOADS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import importlib
import json
import multiprocessing
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

import viewdaemon

from fusemount.client import Client
from fusemount.core.config import dump_config, load_config

REPO_ROOT = viewdaemon.REPO_ROOT
RESULTS_DIR = REPO_ROOT / "bench-results"
SUBTREE = "bench"
MIB = 1 << 20
SMALL = 4096
SEED = 1729
DEFAULT_SCRATCH_PARENT = Path("/var/tmp")  # on the root filesystem, unlike a tmpfs /tmp
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Params:
    """Sizes every workload reads; `--quick` shrinks them."""

    n_files: int  # empty files for create/stat/readdir/unlink and parallel create
    n_small: int  # 4 KiB files
    size_mib: int  # the sequential file
    tree_dirs: int
    tree_files_per_dir: int
    random_s: float  # duration of the random-read loop
    workers: int  # processes in the parallel workloads
    archive: Path  # tar.gz of the synthetic tree, built natively on first use


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    unit: str
    run: Callable[[Path, Params], float]  # times itself; returns the measured number
    description: str
    is_lower_better: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    root: Path  # where workloads run
    backing: Path  # the same directory seen natively; used to clean up after a dead target
    is_alive: Callable[[], bool]
    # Waits until the target no longer affects the machine (fusemount's busy_poll hold
    # would otherwise speed up whichever target runs next).
    settle: Callable[[], None] = lambda: None


@dataclass(slots=True)
class Row:
    workload: Workload
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def median(self, target: str) -> float | None:
        values = self.samples.get(target)
        return statistics.median(values) if values else None

    def ratio(self, target: str) -> float | None:
        """target / native, as the table prints it."""
        value, native = self.median(target), self.median("native")
        if value is None or not native:
            return None
        return value / native

    def speed(self, target: str) -> float | None:
        """Relative speed, higher is faster whatever the unit (for the chart)."""
        ratio = self.ratio(target)
        if ratio is None or ratio == 0:
            return None
        return 1 / ratio if self.workload.is_lower_better else ratio


@dataclass(frozen=True, slots=True)
class WorkerResult:
    units: int
    start: float
    end: float
    error: str | None = None


# --------------------------------------------------------------------------- small helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_fd(fd: int, block: int, offset: int = 0, limit: int | None = None) -> int:
    """Read sequentially with `block`-sized preads from `offset` to EOF or `limit` bytes."""
    buf = bytearray(block)
    total = 0
    while limit is None or total < limit:
        want = block if limit is None else min(block, limit - total)
        n = os.preadv(fd, [memoryview(buf)[:want]], offset + total)
        if n == 0:
            break
        total += n
    return total


def _read_file(path: str, block: int) -> int:
    fd = os.open(path, READ_FLAGS)
    try:
        return _read_fd(fd, block)
    finally:
        os.close(fd)


def _timed_command(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:  # say why: tar's own complaint is the useful part
        complaint = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {' / '.join(complaint)}")
    return elapsed


def drop_caches() -> None:
    """Write back and drop the page, dentry and inode caches (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except PermissionError as exc:
        raise RuntimeError("cold-cache workloads need root to drop caches") from exc


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _done(directory: Path, fixture: str) -> bool:
    return (directory / f"{fixture}.done").exists()


def _mark(directory: Path, fixture: str) -> None:
    (directory / f"{fixture}.done").touch()


def _unmark(directory: Path, fixture: str) -> None:
    (directory / f"{fixture}.done").unlink(missing_ok=True)


def _require(actual: int, expected: int, what: str) -> None:
    if actual != expected:
        raise RuntimeError(f"{what}: got {actual}, expected {expected}")


# --------------------------------------------------------------------------- fixtures
# Each fixture has a builder that times its own core and an `_ensure_*` that builds it
# untimed when a workload runs without its producer (`--only`). A `NAME.done` marker beside
# the fixture says it is complete; checking it costs one lookup, where listing the fixture
# would warm the very caches the next workload measures.


def _empty_paths(directory: Path, p: Params) -> list[str]:
    return [os.path.join(directory, "empty", f"f{i:06d}") for i in range(p.n_files)]


def _make_empty(directory: Path, p: Params) -> float:
    _unmark(directory, "empty")
    _remove(directory / "empty")
    paths = _empty_paths(directory, p)
    os.mkdir(directory / "empty")
    start = time.perf_counter()
    for path in paths:
        os.close(os.open(path, CREATE_FLAGS, 0o644))
    elapsed = time.perf_counter() - start
    _mark(directory, "empty")
    return elapsed


def _ensure_empty(directory: Path, p: Params) -> list[str]:
    if not _done(directory, "empty"):
        _make_empty(directory, p)
    return _empty_paths(directory, p)


def _small_paths(directory: Path, p: Params) -> list[str]:
    return [os.path.join(directory, "small", f"s{i:06d}") for i in range(p.n_small)]


def _make_small(directory: Path, p: Params) -> float:
    _unmark(directory, "small")
    _remove(directory / "small")
    paths = _small_paths(directory, p)
    data = random.Random(SEED).randbytes(SMALL)
    os.mkdir(directory / "small")
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, CREATE_FLAGS, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    _mark(directory, "small")
    return elapsed


def _ensure_small(directory: Path, p: Params) -> list[str]:
    if not _done(directory, "small"):
        _make_small(directory, p)
    return _small_paths(directory, p)


def _read_small(paths: list[str]) -> None:
    buf = bytearray(2 * SMALL)  # room past the end, so a too-long file shows
    for path in paths:
        fd = os.open(path, READ_FLAGS)
        try:
            _require(os.readv(fd, [buf]), SMALL, path)
        finally:
            os.close(fd)


def _make_big(directory: Path, p: Params) -> float:
    _unmark(directory, "big")
    chunk = random.Random(SEED).randbytes(MIB)
    fd = os.open(directory / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(p.size_mib):
            _write_all(fd, chunk)
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    _mark(directory, "big")
    return elapsed


def _ensure_big(directory: Path, p: Params) -> str:
    if not _done(directory, "big"):
        _make_big(directory, p)
    return str(directory / "big.bin")


def _has_dir_link(index: int) -> bool:
    return index > 0 and index % 10 == 0


def _tree_entries(p: Params) -> int:
    """Entries below the tree root: dirs, files, one file symlink per dir, some dir links."""
    dir_links = sum(1 for i in range(p.tree_dirs) if _has_dir_link(i))
    return p.tree_dirs * (p.tree_files_per_dir + 2) + dir_links


def _ensure_archive(p: Params) -> Path:
    """Build the synthetic tree's tar.gz once, natively, outside every target."""
    if p.archive.exists():
        return p.archive
    rng = random.Random(SEED)
    staging = p.archive.with_name("tree-staging")
    _remove(staging)
    root = staging / "tree"
    for i in range(p.tree_dirs):
        sub = root / f"d{i:03d}"
        sub.mkdir(parents=True)
        for j in range(p.tree_files_per_dir):
            (sub / f"f{j:02d}.dat").write_bytes(rng.randbytes(rng.randint(1024, 8192)))
        os.symlink("f00.dat", sub / "latest")
        if _has_dir_link(i):
            os.symlink(f"../d{i - 1:03d}", sub / "prev")
    partial = p.archive.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(root, arcname="tree")
    partial.rename(p.archive)
    shutil.rmtree(staging)
    return p.archive


def _extract(directory: Path, p: Params) -> float:
    archive = _ensure_archive(p)
    _unmark(directory, "tree")
    _remove(directory / "tree")
    elapsed = _timed_command(["tar", "-xzf", str(archive), "-C", str(directory)])
    _mark(directory, "tree")
    return elapsed


def _ensure_tree(directory: Path, p: Params) -> str:
    if not _done(directory, "tree"):
        _extract(directory, p)
    return str(directory / "tree")


# --------------------------------------------------------------------------- parallel runs


def _parallel_worker(job: Callable[[], int], barrier: Barrier, conn: Connection) -> None:
    try:
        barrier.wait(timeout=120)
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        units = job()
        conn.send(WorkerResult(units, start, time.perf_counter()))
    except Exception as exc:
        conn.send(WorkerResult(0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_parallel(jobs: Sequence[Callable[[], int]], timeout_s: float = 600.0) -> tuple[int, float]:
    """Run each job in its own process, released together; return (units, wall seconds)."""
    # fork: jobs are closures over local data, and start-up stays outside the clock anyway
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(jobs) + 1)
    receivers: list[Connection] = []
    processes = []
    try:
        for job in jobs:
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_parallel_worker, args=(job, barrier, sender))
            process.start()
            sender.close()
            receivers.append(receiver)
            processes.append(process)
        barrier.wait(timeout=120)
        results: list[WorkerResult] = []
        for receiver in receivers:
            if not receiver.poll(timeout_s):
                raise RuntimeError(f"a worker gave no result within {timeout_s:.0f} s")
            result = receiver.recv()
            if not isinstance(result, WorkerResult):
                raise RuntimeError(f"unexpected worker reply {result!r}")
            if result.error is not None:
                raise RuntimeError(f"worker failed: {result.error}")
            results.append(result)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for receiver in receivers:
            receiver.close()
    wall = max(r.end for r in results) - min(r.start for r in results)
    return sum(r.units for r in results), wall


def _create_files(paths: list[str]) -> int:
    for path in paths:
        os.close(os.open(path, CREATE_FLAGS, 0o644))
    return len(paths)


def _read_range(path: str, offset: int, length: int) -> int:
    fd = os.open(path, READ_FLAGS)
    try:
        return _read_fd(fd, MIB, offset, length)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- workloads


def wl_create(directory: Path, p: Params) -> float:
    return p.n_files / _make_empty(directory, p)


def _stat_each(paths: list[str]) -> int:
    for path in paths:
        os.stat(path)
    return len(paths)


# A warm pass over 5,000 names takes ~15 ms: one hiccup of this VM (a few ms of steal) would
# move it by a third. Warm rows repeat their pass until this long has passed (well within
# the 1 s entry timeout, so the caches stay warm for every target) and report the overall rate.
WARM_MIN_S = 0.25


def _warm_rate(one_pass: Callable[[], int]) -> float:
    """Units per second over repeated passes of one_pass (which returns its units)."""
    units, start = 0, time.perf_counter()
    while True:
        units += one_pass()
        elapsed = time.perf_counter() - start
        if elapsed >= WARM_MIN_S:
            return units / elapsed


def wl_stat_first(directory: Path, p: Params) -> float:
    """The first pass after the files were made: through FUSE, every entry older than the
    entry timeout (1 s by default, for fusemount and bindfs alike) costs one LOOKUP."""
    paths = _ensure_empty(directory, p)
    start = time.perf_counter()
    return _stat_each(paths) / (time.perf_counter() - start)


def wl_stat(directory: Path, p: Params) -> float:
    """Warm: the timed pass follows an untimed one, as a second `ls -l` or build would."""
    paths = _ensure_empty(directory, p)
    _stat_each(paths)
    return _warm_rate(functools.partial(_stat_each, paths))


def wl_stat_at(directory: Path, p: Params) -> float:
    """stat relative to an open directory: walks that never pass a subtree root."""
    names = [os.path.basename(path) for path in _ensure_empty(directory, p)]
    dir_fd = os.open(directory / "empty", os.O_RDONLY | os.O_DIRECTORY)

    def one_pass() -> int:
        for name in names:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return len(names)

    try:
        return _warm_rate(one_pass)
    finally:
        os.close(dir_fd)


def wl_readdir_stat(directory: Path, p: Params) -> float:
    _ensure_empty(directory, p)
    top = str(directory / "empty")

    def one_pass() -> int:
        count = 0
        with os.scandir(top) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)
                count += 1
        _require(count, p.n_files, "readdir entries")
        return count

    return _warm_rate(one_pass)


def wl_write_small(directory: Path, p: Params) -> float:
    return p.n_small / _make_small(directory, p)


def wl_read_small_warm(directory: Path, p: Params) -> float:
    paths = _ensure_small(directory, p)
    _read_small(paths)
    start = time.perf_counter()
    _read_small(paths)
    return len(paths) / (time.perf_counter() - start)


def wl_unlink(directory: Path, p: Params) -> float:
    paths = _ensure_empty(directory, p)
    _unmark(directory, "empty")  # first: a failure half-way leaves an incomplete fixture
    start = time.perf_counter()
    for path in paths:
        os.unlink(path)
    elapsed = time.perf_counter() - start
    os.rmdir(directory / "empty")
    return len(paths) / elapsed


def wl_seq_write(directory: Path, p: Params) -> float:
    return p.size_mib / _make_big(directory, p)


def _seq_read_cold(directory: Path, p: Params, block: int) -> float:
    path = _ensure_big(directory, p)
    drop_caches()
    start = time.perf_counter()
    total = _read_file(path, block)
    elapsed = time.perf_counter() - start
    _require(total, p.size_mib * MIB, "bytes read")
    return total / MIB / elapsed


def wl_seq_read_cold_1m(directory: Path, p: Params) -> float:
    return _seq_read_cold(directory, p, MIB)


def wl_seq_read_cold_4k(directory: Path, p: Params) -> float:
    return _seq_read_cold(directory, p, SMALL)


def wl_rand_read_warm(directory: Path, p: Params) -> float:
    path = _ensure_big(directory, p)
    pages = p.size_mib * MIB // SMALL
    rng = random.Random(SEED)
    offsets = [rng.randrange(pages) * SMALL for _ in range(1 << 16)]
    mask = len(offsets) - 1
    buf = bytearray(SMALL)
    fd = os.open(path, READ_FLAGS)
    try:
        _require(_read_fd(fd, MIB), p.size_mib * MIB, "warm-up bytes")
        ops = 0
        start = time.perf_counter()
        deadline = start + p.random_s
        while True:
            for _ in range(256):  # amortise the clock read
                if os.preadv(fd, [buf], offsets[ops & mask]) != SMALL:
                    raise RuntimeError("short random read")
                ops += 1
            now = time.perf_counter()
            if now >= deadline:
                break
    finally:
        os.close(fd)
    return ops / (now - start)


def wl_extract(directory: Path, p: Params) -> float:
    return _extract(directory, p)


def wl_walk(directory: Path, p: Params) -> float:
    top = _ensure_tree(directory, p)
    count = 0
    start = time.perf_counter()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            os.lstat(os.path.join(dirpath, name))
            count += 1
    elapsed = time.perf_counter() - start
    _require(count, _tree_entries(p), "walked entries")
    return count / elapsed


def wl_du(directory: Path, p: Params) -> float:
    return _timed_command(["du", "-s", _ensure_tree(directory, p)])


def wl_rm_rf(directory: Path, p: Params) -> float:
    top = _ensure_tree(directory, p)
    _unmark(directory, "tree")
    elapsed = _timed_command(["rm", "-rf", top])
    if os.path.lexists(top):
        raise RuntimeError("rm -rf left the tree behind")
    return elapsed


def wl_parallel_create(directory: Path, p: Params) -> float:
    top = directory / "pcreate"
    _remove(top)
    per_worker = p.n_files // p.workers
    jobs: list[Callable[[], int]] = []
    for w in range(p.workers):
        sub = top / f"w{w}"
        sub.mkdir(parents=True)
        paths = [os.path.join(sub, f"f{i:06d}") for i in range(per_worker)]
        jobs.append(functools.partial(_create_files, paths))
    units, wall = _run_parallel(jobs)
    _require(units, per_worker * p.workers, "files created")
    return units / wall


def wl_parallel_seq_read(directory: Path, p: Params) -> float:
    path = _ensure_big(directory, p)
    size = p.size_mib * MIB
    share = size // p.workers
    jobs: list[Callable[[], int]] = [
        functools.partial(_read_range, path, w * share, share) for w in range(p.workers)
    ]
    drop_caches()
    units, wall = _run_parallel(jobs)
    _require(units, share * p.workers, "bytes read")
    return units / MIB / wall


# qemu-img on a sparse VM image (issue 14): SEEK_DATA/SEEK_HOLE decide whether convert reads
# the whole GiB or only the data in it. Self-contained; the fixture is built untimed.
VM_IMAGE_BYTES = 1 << 30
VM_DATA_MIB = 64  # spread over the image in 1 MiB pieces


def _ensure_vm_image(directory: Path) -> str:
    path = directory / "vm.raw"
    if not _done(directory, "vm"):
        _remove(path)
        chunk = random.Random(SEED).randbytes(MIB)
        fd = os.open(path, CREATE_FLAGS, 0o644)
        try:
            os.ftruncate(fd, VM_IMAGE_BYTES)
            for i in range(VM_DATA_MIB):
                os.lseek(fd, i * (VM_IMAGE_BYTES // VM_DATA_MIB), os.SEEK_SET)
                _write_all(fd, chunk)
        finally:
            os.close(fd)
        _mark(directory, "vm")
    return str(path)


def wl_qemu_convert(directory: Path, p: Params) -> float:
    raw = _ensure_vm_image(directory)
    qcow2, back = str(directory / "vm.qcow2"), str(directory / "vm-back.raw")
    elapsed = _timed_command(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2])
    elapsed += _timed_command(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, back])
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", raw, back],
                   check=True)  # the bytes came back
    os.unlink(qcow2)
    os.unlink(back)
    return elapsed


WORKLOADS: list[Workload] = [
    Workload("create", "ops/s", wl_create, "create empty files (n_files)"),
    Workload("stat_first", "ops/s", wl_stat_first, "os.stat by absolute path, first pass"),
    Workload("stat", "ops/s", wl_stat, "os.stat by absolute path of each empty file, warm"),
    Workload("readdir_stat", "entries/s", wl_readdir_stat, "scandir + entry.stat(lstat), warm"),
    Workload("stat_at", "ops/s", wl_stat_at,
             "fstatat of each empty file from an open directory, warm"),
    Workload("write_4k", "files/s", wl_write_small, "create and write 4 KiB files (n_small)"),
    Workload("read_4k_warm", "files/s", wl_read_small_warm, "open+read 4 KiB files, read once"),
    Workload("unlink", "ops/s", wl_unlink, "unlink each empty file"),
    Workload("seq_write", "MiB/s", wl_seq_write, "1 MiB writes + fsync (size_mib)"),
    Workload("seq_read_cold_1m", "MiB/s", wl_seq_read_cold_1m, "drop caches, 1 MiB reads"),
    Workload("seq_read_cold_4k", "MiB/s", wl_seq_read_cold_4k, "drop caches, 4 KiB reads"),
    Workload("rand_read_4k_warm", "IOPS", wl_rand_read_warm, "4 KiB preads at random offsets"),
    Workload("extract", "s", wl_extract, "tar xzf of the synthetic tree", is_lower_better=True),
    Workload("walk", "entries/s", wl_walk, "os.walk + lstat of the extracted tree"),
    Workload("du", "s", wl_du, "du -s of the extracted tree", is_lower_better=True),
    Workload("rm_rf", "s", wl_rm_rf, "rm -rf of the extracted tree", is_lower_better=True),
    Workload(
        "parallel_create",
        "ops/s",
        wl_parallel_create,
        "parallel processes create files, a dir each",
    ),
    Workload(
        "parallel_seq_read",
        "MiB/s",
        wl_parallel_seq_read,
        "parallel processes, cold, each reads its share",
    ),
    Workload("qemu_convert", "s", wl_qemu_convert,
             "qemu-img convert of a sparse 1 GiB raw image to qcow2 and back",
             is_lower_better=True),
]


# --------------------------------------------------------------------------- mounts, targets


def _fstype(path: Path) -> str:
    """Filesystem type of the mount holding `path` (longest mount point prefix)."""
    best, best_type = "", "unknown"
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            point = fields[4]
            fstype = fields[fields.index("-") + 1]
            inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, best_type = point, fstype
    return best_type


def _check_same_backing(view_dir: Path, backing: Path) -> None:
    probe = ".bench-probe"
    (view_dir / probe).write_bytes(b"probe")
    try:
        if (backing / probe).read_bytes() != b"probe":
            raise RuntimeError(f"{view_dir} does not show {backing}")
    finally:
        (view_dir / probe).unlink()


@contextlib.contextmanager
def native_target(base: Path) -> Iterator[Target]:
    root = base / "native" / SUBTREE  # as deep as VIEW/NAME (module doc)
    root.mkdir(parents=True)
    yield Target("native", root, root, lambda: True)


def fusemount_config(base: Path, name: str, user_config: Path | None, busy_poll: bool) -> Path:
    """The config a fusemount target runs on: the user's (or the defaults) with busy_poll as
    asked, the same for every target, and hide_names for the `fusemount_hidden` column."""
    text = user_config.read_text() if user_config is not None else None
    config = load_config(text)
    config = dataclasses.replace(
        config,
        access=dataclasses.replace(config.access, hide_names=name == "fusemount_hidden"),
        performance=dataclasses.replace(config.performance, busy_poll=busy_poll),
    )
    path = base / f"{name}.toml"
    path.write_text(dump_config(config))
    return path


@contextlib.contextmanager
def fusemount_target(
    base: Path, name: str, config: Path, python: str, timeout_s: float
) -> Iterator[Target]:
    view, src, log_path = base / f"view-{name}", base / "src", base / f"{name}.log"
    view.mkdir()
    src.mkdir(exist_ok=True)
    try:
        with viewdaemon.running_view(view, base / f"state-{name}.json", log_path, config=config,
                                     python=python, timeout_s=timeout_s) as process:
            Client(view).command(shlex.join(["attach", SUBTREE, str(src)]))
            _check_same_backing(view / SUBTREE, src)
            yield Target(name, view / SUBTREE, src, lambda: process.poll() is None,
                         lambda: _wait_busy_poll_released(view))
    finally:
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "Traceback" in log_text or "WARNING" in log_text or "ERROR" in log_text:
            print("fusemount log has warnings or tracebacks; its tail:", file=sys.stderr)
            print(viewdaemon.log_tail(log_path), file=sys.stderr)


def _wait_busy_poll_released(view: Path, timeout_s: float = 10.0) -> None:
    """Until the daemon withdrew its CPU latency request (it holds it while busy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = (view / ".fusemount" / "metrics").read_text()
        if "\nfusemount_busy_poll 1" not in metrics:
            return
        time.sleep(0.2)
    print("fusemount still holds its CPU latency request; next timings may gain", file=sys.stderr)


@contextlib.contextmanager
def bindfs_target(base: Path, timeout_s: float) -> Iterator[Target]:
    # As deep as VIEW/NAME (module doc): a managed mount at /mnt/NAME, its view at /view/NAME.
    mountpoint, src, log_path = base / "bindfs" / SUBTREE, base / "src", base / "bindfs.log"
    mountpoint.mkdir(parents=True)
    src.mkdir(exist_ok=True)
    # -f keeps it a child we own, so it is stopped by its pid, never by name
    argv = ["bindfs", "-f", "--no-allow-other", str(src), str(mountpoint)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        viewdaemon.wait_until(lambda: viewdaemon.is_mounted(mountpoint), process, timeout_s,
                              "bindfs", log_path)
        _check_same_backing(mountpoint, src)
        yield Target("bindfs", mountpoint, src, lambda: process.poll() is None)
    finally:
        viewdaemon.stop(process, mountpoint, "bindfs")


def install_bindfs() -> bool:
    if shutil.which("bindfs"):
        return True
    install = ["apt-get", "install", "-y", "-q", "bindfs"]
    if subprocess.run(install, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(install, check=False)
    return shutil.which("bindfs") is not None


# --------------------------------------------------------------------------- running


def run_rounds(
    targets: Sequence[Target], workloads: Sequence[Workload], p: Params, rounds: int
) -> list[Row]:
    rows = [Row(w) for w in workloads]
    width = max(len(w.name) for w in workloads)
    for r in range(rounds):
        for target in targets:  # interleaved, so drift hits every target alike
            round_dir = target.root / f"{target.name}-r{r}"
            try:
                round_dir.mkdir()
            except OSError as exc:
                for row in rows:
                    row.errors.setdefault(target.name, []).append(f"round dir: {exc}")
                print(f"[{r + 1}/{rounds}] {target.name}: cannot start: {exc}", file=sys.stderr)
                continue
            try:
                for row in rows:
                    label = f"[{r + 1}/{rounds}] {target.name:<9} {row.workload.name:<{width}}"
                    try:
                        if not target.is_alive():
                            raise RuntimeError(f"{target.name} is no longer running")
                        value = row.workload.run(round_dir, p)
                    except Exception as exc:
                        message = f"{type(exc).__name__}: {exc}"
                        row.errors.setdefault(target.name, []).append(message)
                        print(f"{label}  ERROR {message}", file=sys.stderr)
                    else:
                        row.samples.setdefault(target.name, []).append(value)
                        print(f"{label}  {fmt(value)} {row.workload.unit}", file=sys.stderr)
            finally:
                _clean_round(round_dir, target)
                target.settle()
    return rows


def _clean_round(round_dir: Path, target: Target) -> None:
    try:
        shutil.rmtree(round_dir)
    except OSError as exc:
        print(
            f"{target.name}: cleaning through the target failed ({exc}); "
            "cleaning the backing directory",
            file=sys.stderr,
        )
        shutil.rmtree(target.backing / round_dir.name, ignore_errors=True)
    # the deletions' writeback would otherwise land inside the next target's timings
    os.sync()


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None) -> str:
    if value is None:
        return "error"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(rows: Sequence[Row], targets: Sequence[str]) -> str:
    others = [t for t in targets if t != "native"]
    header = ["workload", "unit"]
    if "native" in targets:
        header.append("native")
    for t in others:
        header += [t, f"{t}/native"] if "native" in targets else [t]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        unit = row.workload.unit + (" (lower is better)" if row.workload.is_lower_better else "")
        cells = [row.workload.name, unit]
        if "native" in targets:
            cells.append(fmt(row.median("native")))
        for t in others:
            cells.append(fmt(row.median(t)))
            if "native" in targets:
                ratio = row.ratio(t)
                cells.append("-" if ratio is None else f"{ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def host_info(base: Path) -> dict[str, object]:
    uname = os.uname()
    bindfs = shutil.which("bindfs")
    bindfs_version = ""
    if bindfs:
        done = subprocess.run([bindfs, "--version"], capture_output=True, text=True, check=False)
        bindfs_version = done.stdout.strip()
    return {
        "kernel": uname.release,
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "backing_fstype": _fstype(base),
        "scratch": str(base),
        "bindfs": bindfs_version,
    }


def write_results(
    rows: Sequence[Row],
    targets: Sequence[str],
    p: Params,
    meta: dict[str, object],
    table: str,
    stamp: str,
) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    params = {k: getattr(p, k) for k in p.__dataclass_fields__ if k != "archive"}
    document = {
        "timestamp": stamp,
        "host": meta,
        "params": params,
        "targets": list(targets),
        "results": [
            {
                "workload": row.workload.name,
                "unit": row.workload.unit,
                "lower_is_better": row.workload.is_lower_better,
                "description": row.workload.description,
                "samples": row.samples,
                "median": {t: row.median(t) for t in targets},
                "ratio_to_native": {t: row.ratio(t) for t in targets if t != "native"},
                "errors": row.errors,
            }
            for row in rows
        ],
    }
    text = json.dumps(document, indent=2) + "\n"
    path = RESULTS_DIR / f"bench-{stamp}.json"
    path.write_text(text)
    (RESULTS_DIR / "latest.json").write_text(text)
    summary = (
        f"# fusemount benchmark {stamp}\n\n"
        f"kernel {meta['kernel']}, {meta['cpus']} CPUs, backing {meta['backing_fstype']}; "
        f"params {json.dumps(params)}\n\n{table}\n\n"
        "Medians over rounds; ratios are target/native "
        "(for rows marked lower is better, a ratio above 1 is slower).\n"
    )
    (RESULTS_DIR / "latest.md").write_text(summary)
    return path


def write_chart(rows: Sequence[Row], targets: Sequence[str], path: Path) -> None:
    others = [t for t in targets if t != "native"]
    if "native" not in targets or not others:
        print("--chart needs native and at least one other target; skipped", file=sys.stderr)
        return
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        print("matplotlib is not importable; --chart skipped", file=sys.stderr)
        return
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    height = 0.8 / len(others)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    for k, target in enumerate(others):
        speeds = [row.speed(target) for row in rows]
        ax.barh(
            [i + k * height for i in range(len(rows))],
            [float("nan") if s is None else s for s in speeds],
            height=height,
            label=target,
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(
        [i + height * (len(others) - 1) / 2 for i in range(len(rows))],
        [row.workload.name for row in rows],
    )
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed relative to native (native = 1; higher is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    shutil.copyfile(path, path.with_name("latest.png"))
    print(f"chart: {path}", file=sys.stderr)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure workloads natively, through fusemount and through bindfs."
    )
    parser.add_argument(
        "--targets",
        help="comma list of native,fusemount,fusemount_hidden,bindfs (default: all but "
        "bindfs, plus bindfs if installed); fusemount_hidden runs with access.hide_names",
    )
    parser.add_argument(
        "--with-bindfs",
        action="store_true",
        help="apt-get install bindfs if it is missing, and measure it",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma list of workloads (see --list)")
    parser.add_argument("--list", action="store_true", help="list workloads and exit")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 128 MiB file, 1,000 files, smaller tree"
    )
    parser.add_argument("--size-mb", type=int, help="sequential file size in MiB (default 1024)")
    parser.add_argument("--workers", type=int, default=4, help="processes in parallel workloads")
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_SCRATCH_PARENT,
        help="parent of the scratch directory (default /var/tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--config", type=Path, help="fusemount config file for the daemons")
    parser.add_argument(
        "--busy-poll",
        action="store_true",
        help="run fusemount with [performance] busy_poll = true (default: off, as shipped)",
    )
    parser.add_argument("--start-timeout-s", type=float, default=20.0)
    parser.add_argument("--chart", action="store_true", help="also write a PNG (matplotlib)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.workers < 1 or (args.size_mb is not None and args.size_mb < 1):
        parser.error("--rounds, --workers and --size-mb must be positive")
    return args


def select_workloads(only: str | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS)
    by_name = {w.name: w for w in WORKLOADS}
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [w for w in WORKLOADS if w.name in names]  # keep the producer-first order


def select_targets(spec: str | None, with_bindfs: bool) -> list[str]:
    known = ("native", "fusemount", "fusemount_hidden", "bindfs")
    if spec is None:
        names = ["native", "fusemount", "fusemount_hidden"]
        if with_bindfs or shutil.which("bindfs"):
            names.append("bindfs")
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise SystemExit(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if "bindfs" in names and not shutil.which("bindfs"):
        if not with_bindfs:
            raise SystemExit("bindfs is not installed; pass --with-bindfs to install it")
        if not install_bindfs():
            raise SystemExit("could not install bindfs")
    return [n for n in known if n in names]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:<20} {w.unit:<10} {w.description}")
        return 0
    workloads = select_workloads(args.only)
    target_names = select_targets(args.targets, args.with_bindfs)
    if os.geteuid() != 0:
        print("warning: not root; cold-cache workloads and mounting will fail", file=sys.stderr)
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="fusemount-bench-", dir=args.dir)))
    p = Params(
        n_files=1000 if args.quick else 5000,
        n_small=1000 if args.quick else 2000,
        size_mib=args.size_mb or (128 if args.quick else 1024),
        tree_dirs=50 if args.quick else 200,
        tree_files_per_dir=20,
        random_s=1.0 if args.quick else 2.0,
        workers=args.workers,
        archive=base / "tree.tar.gz",
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"scratch {base} ({_fstype(base)}); targets {','.join(target_names)}", file=sys.stderr)
    try:
        meta = host_info(base)
        with contextlib.ExitStack() as stack:
            targets = []
            for name in target_names:
                if name == "native":
                    factory = native_target(base)
                elif name.startswith("fusemount"):
                    config = fusemount_config(base, name, args.config, args.busy_poll)
                    factory = fusemount_target(
                        base, name, config, sys.executable, args.start_timeout_s
                    )
                else:
                    factory = bindfs_target(base, args.start_timeout_s)
                targets.append(stack.enter_context(factory))
            rows = run_rounds(targets, workloads, p, args.rounds)
    except (RuntimeError, OSError) as exc:  # a target that cannot start; workloads catch their own
        print(f"benchmark aborted: {exc}", file=sys.stderr)
        return 2
    finally:
        left = viewdaemon.mounts_under(base)
        if left:
            print(f"still mounted, scratch kept: {', '.join(left)}", file=sys.stderr)
        elif args.keep:
            print(f"scratch kept: {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    table = markdown_table(rows, target_names)
    print(table)
    path = write_results(rows, target_names, p, meta, table, stamp)
    print(f"results: {path}", file=sys.stderr)
    if args.chart:
        write_chart(rows, target_names, path.with_suffix(".png"))
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
