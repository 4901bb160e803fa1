#!/usr/bin/env python3
"""A/B of request-bound operations: two or more fusemount variants, interleaved, one run.

`make bench` compares fusemount with native access and bindfs; this compares fusemount with
itself: another source tree (a branch checked out elsewhere) or another config (say
`[performance] spin_us = 0`). Each variant serves its own view over its own tmpfs; every
workload runs ROUNDS times across the variants in alternating order, and the medians and
their ratios to the first variant are printed as a Markdown table. README "Performance"
quotes its numbers (spinning, listings).

    scripts/ab_requests.py base=.:spin0.toml spin=.          # one tree, two configs
    scripts/ab_requests.py old=/tmp/old-main new=.           # two trees, defaults

A variant is LABEL=TREE[:CONFIG]; TREE is a fusemount checkout whose package is imported
(PYTHONPATH), run with this script's Python. Like bench.py it is never part of the test
suite and never leaves a daemon, mount or scratch directory behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import viewdaemon

SUBTREE = "ab"
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
EXPIRE_S = 1.1  # past the default 1 s entry and attribute timeouts


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    tree: Path
    config: Path | None


@dataclass(frozen=True, slots=True)
class Dirs:
    flat: Path  # n files
    tree: Path  # n/20 directories of 20 files


def parse_variant(spec: str) -> Variant:
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise argparse.ArgumentTypeError(f"expected LABEL=TREE[:CONFIG], got {spec!r}")
    tree, _, config = rest.partition(":")
    return Variant(label, Path(tree).resolve(), Path(config).resolve() if config else None)


@contextlib.contextmanager
def serving(variant: Variant, base: Path, n: int) -> Iterator[Dirs]:
    src, view = base / f"src-{variant.label}", base / f"view-{variant.label}"
    src.mkdir()
    view.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "fusemount-ab", str(src)],
                   check=True)
    log = base / f"{variant.label}.log"
    argv = [sys.executable, "-m", "fusemount", "serve", str(view), "--state",
            str(base / f"{variant.label}.json")]
    if variant.config is not None:
        argv += ["--config", str(variant.config)]
    env = dict(os.environ, PYTHONPATH=str(variant.tree))
    try:
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       cwd=variant.tree, env=env)
        try:
            viewdaemon.wait_until(
                lambda: viewdaemon.is_readable(view / ".fusemount" / "version"), process, 20.0,
                variant.label, log)
            (view / ".fusemount" / "ctl").write_text(
                shlex.join(["attach", SUBTREE, str(src)]) + "\n")
            dirs = Dirs(view / SUBTREE / "flat", view / SUBTREE / "tree")
            dirs.flat.mkdir()
            for d in range(max(1, n // 20)):
                sub = dirs.tree / f"d{d:04d}"
                sub.mkdir(parents=True)
                for f in range(20):
                    os.close(os.open(sub / f"f{f}", CREATE_FLAGS, 0o644))
            yield dirs
        finally:
            viewdaemon.stop(process, view, variant.label, timeout_s=30.0)
    finally:
        subprocess.run(["umount", "-l", str(src)], check=False)


def _names(dirs: Dirs, n: int) -> list[str]:
    return [os.path.join(dirs.flat, f"f{i:06d}") for i in range(n)]


def _timed(names: list[str], each: Callable[[str], object]) -> float:
    """Names per second of each(name) over all names."""
    start = time.perf_counter()
    for name in names:
        each(name)
    return len(names) / (time.perf_counter() - start)


def _create(name: str) -> None:
    os.close(os.open(name, CREATE_FLAGS, 0o644))


def _open_close(name: str) -> None:
    os.close(os.open(name, os.O_RDONLY))


def wl_create(dirs: Dirs, n: int) -> float:
    names = _names(dirs, n)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    time.sleep(EXPIRE_S)
    return _timed(names, _create)


def wl_lookup(dirs: Dirs, n: int) -> float:
    """stat of entries older than the timeouts: one LOOKUP each."""
    names = _names(dirs, n)
    time.sleep(EXPIRE_S)
    return _timed(names, os.stat)


def wl_open_close(dirs: Dirs, n: int) -> float:
    names = _names(dirs, n)
    for name in names:
        os.stat(name)
    return _timed(names, _open_close)


def _scandir_stat(top: Path) -> int:
    count = 0
    with os.scandir(top) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
            count += 1
    return count


def wl_listing_warm(dirs: Dirs, n: int) -> float:
    _scandir_stat(dirs.flat)
    start = time.perf_counter()
    count = _scandir_stat(dirs.flat)
    return count / (time.perf_counter() - start)


def wl_listing_cold(dirs: Dirs, n: int) -> float:
    time.sleep(EXPIRE_S)
    start = time.perf_counter()
    count = _scandir_stat(dirs.flat)
    return count / (time.perf_counter() - start)


def wl_walk_cold(dirs: Dirs, n: int) -> float:
    time.sleep(EXPIRE_S)
    count, start = 0, time.perf_counter()
    for top, subdirs, files in os.walk(dirs.tree):
        for name in (*subdirs, *files):
            os.lstat(os.path.join(top, name))
            count += 1
    return count / (time.perf_counter() - start)


def wl_unlink(dirs: Dirs, n: int) -> float:
    names = _names(dirs, n)
    for name in names:
        os.stat(name)
    rate = _timed(names, os.unlink)
    for name in names:
        _create(name)
    return rate


WORKLOADS: dict[str, Callable[[Dirs, int], float]] = {
    "create": wl_create,  # first: the others use its files
    "lookup": wl_lookup,
    "open_close": wl_open_close,
    "listing_warm": wl_listing_warm,
    "listing_cold": wl_listing_cold,
    "walk_cold": wl_walk_cold,
    "unlink": wl_unlink,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="LABEL=TREE[:CONFIG]")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if len({v.label for v in args.variants}) != len(args.variants):
        parser.error("labels must differ")
    if os.geteuid() != 0:
        parser.error("needs root (tmpfs mounts, FUSE)")
    base = Path(tempfile.mkdtemp(prefix="fusemount-ab-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            dirs = {v.label: stack.enter_context(serving(v, base, args.files))
                    for v in args.variants}
            labels = [v.label for v in args.variants]
            print("| workload | " + " | ".join(labels) + " | "
                  + " | ".join(f"{lab}/{labels[0]}" for lab in labels[1:]) + " |")
            print("|---|" + "---:|" * (2 * len(labels) - 1))
            for name, run in WORKLOADS.items():
                samples: dict[str, list[float]] = {lab: [] for lab in labels}
                for r in range(args.rounds):
                    for lab in (labels if r % 2 == 0 else labels[::-1]):
                        samples[lab].append(run(dirs[lab], args.files))
                medians = [statistics.median(samples[lab]) for lab in labels]
                print(f"| {name} | " + " | ".join(f"{m:,.0f}" for m in medians) + " | "
                      + " | ".join(f"{m / medians[0]:.2f}" for m in medians[1:]) + " |",
                      flush=True)
    finally:
        if not viewdaemon.mounts_under(base):
            subprocess.run(["rm", "-rf", str(base)], check=False)
        else:
            print(f"left {base}: still mounted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
