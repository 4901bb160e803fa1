#!/usr/bin/env python3
"""Measure the descriptors and memory the daemon holds while `find`, `ls -lR` and `du` walk a
huge tree through the view (SPEC 6: "a `find` over a million files must not exhaust
descriptors").

Builds a tree of empty files natively once (BASE/fusemount-walk-N, reused while its marker
matches; removed at the end unless --keep), starts `python -m fusemount serve` on a scratch
view with a config file, attaches the tree as subtree `walk`, then times each walk while a
thread samples the daemon's /proc/PID/fd and VmRSS/VmHWM every 0.5 s, and reads the
`fusemount_held_descriptors` and `fusemount_inodes` gauges after each phase. Prints a
Markdown table, optionally writes JSON.

It must never be part of the test suite (it takes minutes and its numbers depend on the
machine), and never leave a daemon or a mount behind: the daemon is stopped in `finally`
(SIGTERM, wait, SIGKILL, `umount -l`), and the scratch directory is removed only once nothing
is mounted under it. Exit status: 0 when every phase ran and checked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import viewdaemon

from fusemount.client import Client

SUBTREE = "walk"
SAMPLE_INTERVAL_S = 0.5
MIB_KIB = 1024
# Lines of the daemon log that tell a descriptor or crash story.
ALARMS = ("Too many open files", "EMFILE", "ENFILE", "Traceback", "ERROR", "CRITICAL")
GAUGES = ("fusemount_held_descriptors", "fusemount_inodes", "fusemount_process_descriptors")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # since the phase started
    fds: int
    rss_kib: int
    hwm_kib: int


@dataclass(slots=True)
class PhaseResult:
    name: str
    command: str
    seconds: float = 0.0
    entries: int = 0
    samples: list[Sample] = field(default_factory=list)
    gauges: dict[str, float] = field(default_factory=dict)  # read after the phase
    requests: dict[str, int] = field(default_factory=dict)  # FUSE requests during the phase
    output: str = ""  # what the command printed that we check (count, du size)
    stderr_tail: str = ""
    error: str | None = None

    @property
    def entries_per_s(self) -> float | None:
        return self.entries / self.seconds if self.seconds > 0 and self.error is None else None

    @property
    def max_fds(self) -> int | None:
        return max((s.fds for s in self.samples), default=None)

    @property
    def max_rss_mib(self) -> float | None:
        peak = max((s.rss_kib for s in self.samples), default=None)
        return None if peak is None else peak / MIB_KIB

    @property
    def hwm_mib(self) -> float | None:
        return self.samples[-1].hwm_kib / MIB_KIB if self.samples else None


@dataclass(frozen=True, slots=True)
class Tree:
    path: Path  # the directory that gets attached
    top: Path  # BASE/fusemount-walk-N, what --keep keeps
    files: int
    dirs: int
    build_s: float | None  # None: reused


# --------------------------------------------------------------------------- the tree


def _tree_marker(files: int, dirs: int) -> dict[str, int]:
    return {"files": files, "dirs": dirs}


def ensure_tree(base: Path, files: int, dirs: int) -> Tree:
    """The tree of `files` empty files over `dirs` directories, built natively unless reused.

    A `complete.json` marker is written last, so a build cut short is rebuilt from scratch.
    """
    top = base / f"fusemount-walk-{files}"
    tree = top / "tree"
    marker = top / "complete.json"
    try:
        if json.loads(marker.read_text()) == _tree_marker(files, dirs):
            return Tree(tree, top, files, dirs, None)
    except (OSError, ValueError):
        pass
    if top.exists():
        print(f"removing incomplete or different tree {top}", file=sys.stderr)
        shutil.rmtree(top)
    print(f"building {files:,} files in {dirs:,} directories under {tree}", file=sys.stderr)
    tree.mkdir(parents=True)
    start = time.perf_counter()
    for d in range(dirs):
        directory = os.path.join(tree, f"d{d:05d}")
        os.mkdir(directory)
        for i in range(d * files // dirs, (d + 1) * files // dirs):
            os.mknod(os.path.join(directory, f"f{i:07d}"), 0o644 | stat.S_IFREG)
    os.sync()  # the build's writeback would otherwise land inside the first phase
    elapsed = time.perf_counter() - start
    marker.write_text(json.dumps(_tree_marker(files, dirs)) + "\n")
    return Tree(tree, top, files, dirs, elapsed)


# --------------------------------------------------------------------------- /proc


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of pid in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    if len(values) != 2:  # a zombie has no memory lines: the daemon died, unreaped
        raise ProcessLookupError(pid, "no memory lines in /proc/PID/status")
    return values["VmRSS"], values["VmHWM"]


def take_sample(pid: int, since: float) -> Sample | None:
    try:
        rss, hwm = _status_kib(pid)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):  # the daemon is gone
        return None
    return Sample(time.monotonic() - since, fds, rss, hwm)


def nofile_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) RLIMIT_NOFILE of pid as /proc/PID/limits spells them."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line[len("Max open files") :].split()[:2]
                return soft, hard
    raise RuntimeError(f"no 'Max open files' line in /proc/{pid}/limits")


class Sampler:
    """Samples the daemon every SAMPLE_INTERVAL_S from a thread, from start() to stop()."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._samples: list[Sample] = []
        self._stopping = threading.Event()
        self._since = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> None:
        self._since = time.monotonic()
        self._thread.start()

    def _loop(self) -> None:
        while True:
            sample = take_sample(self._pid, self._since)
            if sample is not None:
                self._samples.append(sample)
            if self._stopping.wait(SAMPLE_INTERVAL_S):
                return

    def stop(self) -> list[Sample]:
        self._stopping.set()
        self._thread.join()
        last = take_sample(self._pid, self._since)  # the state the phase left behind
        if last is not None:
            self._samples.append(last)
        return self._samples


# --------------------------------------------------------------------------- the daemon


_REQUESTS_RE = re.compile(r'fusemount_requests_total\{op="([a-z_]+)"\} (\d+)')


def read_metrics(view: Path) -> tuple[dict[str, float], dict[str, int]]:
    """The GAUGES samples and the FUSE request counters by op, from the metrics file."""
    gauges: dict[str, float] = {}
    requests: dict[str, int] = {}
    text = (view / ".fusemount" / "metrics").read_text()
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            gauges[name] = float(value)
        elif match := _REQUESTS_RE.fullmatch(line):
            requests[match.group(1)] = int(match.group(2))
    return gauges, requests


@contextlib.contextmanager
def running_daemon(
    scratch: Path, config_text: str, timeout_s: float
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    view, config = scratch / "view", scratch / "config.toml"
    view.mkdir()
    config.write_text(config_text)
    with viewdaemon.running_view(view, scratch / "state.json", scratch / "daemon.log",
                                 config=config, timeout_s=timeout_s) as process:
        yield process, view


# --------------------------------------------------------------------------- phases


def _run_pipeline(
    stages: Sequence[Sequence[str]], capture: bool, err_path: Path, timeout_s: float
) -> tuple[list[int], bytes]:
    """Run stages joined by pipes; (return codes, last stage's stdout if captured)."""
    processes: list[subprocess.Popen[bytes]] = []
    with open(err_path, "wb") as err:
        try:
            stdin: int | None = subprocess.DEVNULL
            for k, argv in enumerate(stages):
                is_last = k == len(stages) - 1
                stdout = subprocess.DEVNULL if is_last and not capture else subprocess.PIPE
                process = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=err)
                if processes:
                    prev_out = processes[-1].stdout
                    assert prev_out is not None
                    prev_out.close()  # the next stage owns the read end now
                processes.append(process)
                if not is_last:
                    assert process.stdout is not None
                    stdin = process.stdout.fileno()
            out, _ = processes[-1].communicate(timeout=timeout_s)
            deadline = time.monotonic() + timeout_s
            codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return codes, out or b""


def run_phase(
    name: str,
    stages: Sequence[Sequence[str]],
    capture: bool,
    pid: int,
    view: Path,
    scratch: Path,
    entries: int,
    timeout_s: float,
) -> tuple[PhaseResult, bytes]:
    command = " | ".join(shlex.join(stage) for stage in stages)
    result = PhaseResult(name, command, entries=entries)
    err_path = scratch / f"{name}.stderr"
    print(f"{name}: {command}", file=sys.stderr)
    try:
        _, requests_before = read_metrics(view)
    except OSError:
        requests_before = {}
    sampler = Sampler(pid)
    sampler.start()
    start = time.perf_counter()
    out = b""
    try:
        codes, out = _run_pipeline(stages, capture, err_path, timeout_s)
        result.seconds = time.perf_counter() - start
        if any(codes):
            result.error = f"exit codes {codes}"
    except subprocess.TimeoutExpired:
        result.seconds = time.perf_counter() - start
        result.error = f"timed out after {timeout_s:.0f} s"
    finally:
        result.samples = sampler.stop()
    err_lines = err_path.read_text(errors="replace").splitlines()
    if err_lines:
        result.stderr_tail = "\n".join(err_lines[-10:])
        if result.error is None:
            result.error = f"{len(err_lines)} lines on stderr"
        else:
            result.error += f"; {len(err_lines)} lines on stderr"
    try:
        result.gauges, requests_after = read_metrics(view)
        result.requests = {
            op: n - requests_before.get(op, 0)
            for op, n in sorted(requests_after.items())
            if n > requests_before.get(op, 0)
        }
    except OSError as exc:
        result.error = (result.error + "; " if result.error else "") + f"metrics: {exc}"
    return result, out


def walk(
    process: subprocess.Popen[bytes], view: Path, scratch: Path, tree: Tree, timeout_s: float
) -> list[PhaseResult]:
    """find | wc -l, ls -lR, du -s, in that order; stops early if the daemon dies."""
    pid = process.pid
    top = str(view / SUBTREE)
    entries = tree.files + tree.dirs + 1  # every file, every directory and the root
    phases: list[PhaseResult] = []

    def alive() -> bool:
        return process.poll() is None

    result, out = run_phase(
        "find", [["find", top, "-type", "f"], ["wc", "-l"]], True, pid, view, scratch,
        entries, timeout_s,
    )  # fmt: skip
    result.output = out.decode().strip()
    if result.error is None and result.output != str(tree.files):
        result.error = f"find counted {result.output} files, expected {tree.files}"
    phases.append(result)
    if not alive():
        return phases

    result, _ = run_phase(
        "ls -lR", [["ls", "-lR", top]], False, pid, view, scratch, entries, timeout_s
    )
    phases.append(result)
    if not alive():
        return phases

    result, out = run_phase(
        "du -s", [["du", "-s", top]], True, pid, view, scratch, entries, timeout_s
    )
    result.output = out.decode().strip()
    phases.append(result)
    return phases


# --------------------------------------------------------------------------- reporting


def _cell(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(phases: Sequence[PhaseResult]) -> str:
    lines = [
        "| phase | seconds | entries/s | max fds | max RSS MiB | inodes known at end "
        "| held descriptors at end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        name = p.name if p.error is None else f"{p.name} (FAILED)"
        cells = [
            name,
            _cell(p.seconds, 1),
            _cell(p.entries_per_s),
            _cell(p.max_fds),
            _cell(p.max_rss_mib),
            _cell(p.gauges.get("fusemount_inodes")),
            _cell(p.gauges.get("fusemount_held_descriptors")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_alarms(log_path: Path) -> list[str]:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(a in line for a in ALARMS)]


def to_json(
    args: argparse.Namespace,
    tree: Tree,
    nofile: tuple[str, str] | None,
    phases: Sequence[PhaseResult],
    daemon: dict[str, object],
) -> dict[str, object]:
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": os.uname().release, "cpus": os.cpu_count()},
        "params": {
            "files": tree.files,
            "dirs": tree.dirs,
            "tree": str(tree.path),
            "tree_build_s": tree.build_s,
            "max_cached_fds": args.max_cached_fds,
            "sample_interval_s": SAMPLE_INTERVAL_S,
        },
        "daemon_rlimit_nofile": None if nofile is None else {"soft": nofile[0], "hard": nofile[1]},
        "daemon": daemon,
        "phases": [
            {
                "phase": p.name,
                "command": p.command,
                "seconds": p.seconds,
                "entries": p.entries,
                "entries_per_s": p.entries_per_s,
                "max_fds": p.max_fds,
                "max_rss_mib": p.max_rss_mib,
                "hwm_mib_at_end": p.hwm_mib,
                "gauges_at_end": p.gauges,
                "requests": p.requests,
                "output": p.output,
                "error": p.error,
                "stderr_tail": p.stderr_tail,
                "samples": [dataclasses.asdict(s) for s in p.samples],
            }
            for p in phases
        ],
    }


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Descriptors and memory of the fusemount daemon while find, ls -lR and du "
        "walk a huge tree through the view."
    )
    parser.add_argument("--files", type=int, default=1_000_000, help="empty files (1,000,000)")
    parser.add_argument("--dirs", type=int, default=1000, help="directories, files spread evenly")
    parser.add_argument(
        "--dir", type=Path, default=Path("/var/tmp"), help="where the tree and scratch live"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the tree (BASE/fusemount-walk-N) for reuse"
    )
    parser.add_argument(
        "--max-cached-fds", type=int, help="[limits] max_cached_fds in the daemon's config"
    )
    parser.add_argument(
        "--max-inodes", type=int, help="[limits] max_inodes in the daemon's config"
    )
    parser.add_argument("--json", type=Path, help="write the results and samples here")
    parser.add_argument("--phase-timeout-s", type=float, default=1800.0)
    parser.add_argument("--start-timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.files < 1 or args.dirs < 1:
        parser.error("--files and --dirs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("walk_fds: needs root (mounting, reading the daemon's /proc)", file=sys.stderr)
        return 2
    base = Path(os.path.realpath(args.dir))  # attach refuses any symlink in the path
    tree = ensure_tree(base, args.files, args.dirs)
    if tree.build_s is None:
        print(f"reusing {tree.path}", file=sys.stderr)
    else:
        print(f"built in {tree.build_s:.1f} s", file=sys.stderr)
    config_text = "# written by scripts/walk_fds.py\n"
    limits = []
    if args.max_cached_fds is not None:
        limits.append(f"max_cached_fds = {args.max_cached_fds}")
    if args.max_inodes is not None:
        limits.append(f"max_inodes = {args.max_inodes}")
    if limits:
        config_text += "[limits]\n" + "\n".join(limits) + "\n"
    scratch = Path(tempfile.mkdtemp(prefix="fusemount-walk-run-", dir=base))
    phases: list[PhaseResult] = []
    nofile: tuple[str, str] | None = None
    daemon: dict[str, object] = {}
    alarms: list[str] = []
    failure: str | None = None
    log_path = scratch / "daemon.log"
    try:
        with running_daemon(scratch, config_text, args.start_timeout_s) as (process, view):
            nofile = nofile_limit(process.pid)
            reply = Client(view).command(shlex.join(["attach", SUBTREE, str(tree.path)]))
            print(f"attached: {json.dumps(reply)}", file=sys.stderr)
            phases = walk(process, view, scratch, tree, args.phase_timeout_s)
            daemon["exit_code_after_walk"] = process.poll()  # None: still running
        daemon["exit_code"] = process.returncode
    except (RuntimeError, OSError, ValueError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        print(f"walk aborted: {failure}", file=sys.stderr)
    finally:
        alarms = log_alarms(log_path)
        daemon["log_alarms"] = alarms[:50]
        daemon["log_alarm_lines"] = len(alarms)
        daemon["log_tail"] = viewdaemon.log_tail(log_path)
        left = viewdaemon.mounts_under(scratch)
        if left:
            print(f"still mounted, scratch kept: {', '.join(left)}", file=sys.stderr)
        elif failure or alarms or args.keep:
            print(f"scratch kept (daemon log, stderr of each phase): {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep and not viewdaemon.mounts_under(tree.top):
            shutil.rmtree(tree.top, ignore_errors=True)
    daemon["failure"] = failure

    print(f"\n{tree.files:,} files in {tree.dirs:,} directories; "
          f"max_cached_fds={args.max_cached_fds or 'default'}\n")  # fmt: skip
    print(markdown_table(phases))
    if nofile is not None:
        print(f"\ndaemon RLIMIT_NOFILE: soft {nofile[0]}, hard {nofile[1]}")
    peaks = [p.hwm_mib for p in phases if p.hwm_mib is not None]
    if peaks:
        print(f"daemon VmHWM at the end: {peaks[-1]:,.0f} MiB")
    if daemon.get("exit_code_after_walk") is not None:
        print(f"\nDAEMON DIED during the walk: exit code {daemon['exit_code_after_walk']}")
    for p in phases:
        ops = ", ".join(f"{op} {n:,}" for op, n in p.requests.items())
        print(f"\nFUSE requests during {p.name}: {ops or '-'}")
    for p in phases:
        if p.error is not None:
            print(f"\n{p.name} FAILED: {p.error}\n{p.stderr_tail}")
    if alarms:
        print(f"\ndaemon log: {len(alarms)} alarm lines; the first:")
        for line in alarms[:10]:
            print(f"  {line}")
    if failure:
        print(f"\nrun failed: {failure}")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(args, tree, nofile, phases, daemon), indent=2))
        print(f"\njson: {args.json}", file=sys.stderr)
    ok = failure is None and len(phases) == 3 and all(p.error is None for p in phases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
