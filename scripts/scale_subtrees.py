#!/usr/bin/env python3
"""Scale check: N subtrees attached to one view (issue "Performance", item 5).

Attaches N directories, then times the root listing, lookups of subtree names, and reads of
`mounts` and `mounts.json`, and reports the daemon's RSS and descriptors per subtree.
Usage: scale_subtrees.py [--subtrees 1000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import viewdaemon

from fusemount.client import Client


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))




def _timed(fn: object, repeat: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subtrees", type=int, default=1000)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="fusemount-scale-", dir=args.dir))
    view = base / "view"
    view.mkdir()
    config = base / "config.toml"
    config.write_text(f"[limits]\nmax_subtrees = {args.subtrees}\n")
    try:
        with viewdaemon.running_view(view, base / "state.json", base / "daemon.log",
                                     config=config) as proc:
            rss0, fds0 = _status(proc.pid, "VmRSS"), _fds(proc.pid)
            start = time.perf_counter()
            for i in range(args.subtrees):
                src = base / "src" / f"s{i}"
                src.mkdir(parents=True)
                Client(view).command(f"attach s{i} {src}")
            attach_s = time.perf_counter() - start
            rss1, fds1 = _status(proc.pid, "VmRSS"), _fds(proc.pid)
            names = [f"s{i}" for i in range(0, args.subtrees, max(1, args.subtrees // 100))]
            rows = [
                ("attach (each, incl. durable state write)", attach_s / args.subtrees),
                ("root listing (os.listdir VIEW)", _timed(lambda: os.listdir(view), 20)),
                ("lookup of a subtree name (os.stat VIEW/NAME)",
                 _timed(lambda: [os.stat(view / n) for n in names], 5) / len(names)),
                ("read mounts", _timed(lambda: (view / ".fusemount" / "mounts").read_bytes(), 20)),
                ("read mounts.json",
                 _timed(lambda: (view / ".fusemount" / "mounts.json").read_bytes(), 20)),
            ]
            print(f"| {args.subtrees} subtrees | ms |\n|---|---:|")
            for label, seconds in rows:
                print(f"| {label} | {seconds * 1000:.3f} |")
            per = args.subtrees
            print(f"\nRSS {rss0} KiB -> {rss1} KiB: {(rss1 - rss0) / per:.1f} KiB per subtree")
            print(f"descriptors {fds0} -> {fds1}: {(fds1 - fds0) / per:.2f} per subtree")
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the view is unmounted by then
    return 0


if __name__ == "__main__":
    sys.exit(main())
