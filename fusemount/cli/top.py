"""`fusemount top VIEW`: a live terminal view of what the daemon is doing (SPEC 4 `metrics`).

How this works: a sampler thread reads VIEW/.fusemount/metrics once per interval and hands
each reading (a `Sample`) to the curses loop, which keeps the last two. `render_frame()`
turns (previous, current) into the screen's lines: rates are counter deltas over the time
between the two readings, latency percentiles are estimated from the histogram buckets
that moved in that interval (all of them, for an op that was idle). Everything shown
comes from the metrics file, so what an admin sees here is what a scraper would see.

Never: read anything but the metrics file (no ctl, no /proc, no state file); let a
malformed line, a vanished view or a tiny or resized terminal end the program; leave the
terminal in curses mode on exit. The file is admins-only: EACCES is a one-line error, exit 1.
Reads happen in their own thread so that a hung view cannot stop `q` from working.
"""

from __future__ import annotations

import contextlib
import curses
import errno
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

_P = "fusemount_"
REQUESTS = _P + "requests_total"
ERRORS = _P + "request_errors_total"
BUCKETS = _P + "request_duration_seconds_bucket"
SUBTREE_REQUESTS = _P + "subtree_requests_total"
SUBTREE_OPEN_FILES = _P + "subtree_open_files"
CONTROL = _P + "control_commands_total"

OPS_TITLE = (f"{'OP':<13} {'REQ/S':>8} {'TOTAL':>9} {'ERR/S':>7} "
             f"{'P50':>7} {'P95':>7} {'P99':>7}  ERRORS")
SUBTREES_TITLE = f"{'SUBTREE':<24} {'REQ/S':>8} {'TOTAL':>9} {'OPEN':>6}"
_QUANTILES = (0.5, 0.95, 0.99)
_KEY_POLL_MS = 100
_FULL_HEADER_MIN_HEIGHT = 12


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the metrics file: every series, and when it was taken."""

    # metric name (with _bucket/_sum/_count suffix) -> sorted label pairs -> value
    series: Mapping[str, Mapping[Labels, float]]
    taken_s: float  # time.monotonic(): rates divide by differences of this
    wall_s: float  # time.time(): shown in the header only

    def family(self, name: str) -> Mapping[Labels, float]:
        return self.series.get(name, {})

    def value(self, name: str, **labels: str) -> float | None:
        return self.family(name).get(tuple(sorted(labels.items())))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A family with one interesting label as {label value: sample value}."""
        return {dict(key).get(label, ""): v for key, v in self.family(name).items()}


# --- parsing --------------------------------------------------------------------------------


def parse_metrics(text: str, *, taken_s: float | None = None,
                  wall_s: float | None = None) -> Sample:
    """Parse a Prometheus text exposition (format 0.0.4). Never raises: bad lines are skipped.

    taken_s and wall_s default to now (monotonic and wall clock).
    """
    series: dict[str, dict[Labels, float]] = {}
    for line in text.splitlines():
        parsed = _parse_line(line.strip())
        if parsed is not None:
            name, labels, value = parsed
            series.setdefault(name, {})[labels] = value
    return Sample(
        series,
        time.monotonic() if taken_s is None else taken_s,
        time.time() if wall_s is None else wall_s,
    )


def _parse_line(line: str) -> tuple[str, Labels, float] | None:
    if not line or line.startswith("#"):
        return None
    end = 0
    while end < len(line) and (line[end].isalnum() or line[end] in "_:"):
        end += 1
    name = line[:end]
    if not name or name[0].isdigit():
        return None
    labels: list[tuple[str, str]] = []
    rest = line[end:]
    if rest.startswith("{"):
        parsed = _parse_labels(rest)
        if parsed is None:
            return None
        labels, rest = parsed
    fields = rest.split()
    if not fields or len(fields) > 2:  # value, optional timestamp
        return None
    try:
        value = float(fields[0])
    except ValueError:
        return None
    return name, tuple(sorted(labels)), value


def _parse_labels(text: str) -> tuple[list[tuple[str, str]], str] | None:
    """`{a="x",b="y"} rest` -> ([(a, x), (b, y)], " rest"); None if malformed."""
    labels: list[tuple[str, str]] = []
    i = 1
    while True:
        while i < len(text) and text[i] in " ,":
            i += 1
        if i < len(text) and text[i] == "}":
            return labels, text[i + 1 :]
        eq = text.find("=", i)
        if eq < 0 or eq + 1 >= len(text) or text[eq + 1] != '"':
            return None
        label = text[i:eq].strip()
        value: list[str] = []
        i = eq + 2
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
                value.append({"n": "\n"}.get(text[i], text[i]))
            else:
                value.append(text[i])
            i += 1
        if i >= len(text) or not label:
            return None
        labels.append((label, "".join(value)))
        i += 1


def read_sample(path: str) -> Sample:
    """Read and parse the metrics file at path. OSError as the kernel gave it (EACCES...)."""
    with open(path, "rb") as f:
        # The daemon renders its snapshot at open(): that is the moment this sample describes.
        taken_s, wall_s = time.monotonic(), time.time()
        data = f.read()
    return parse_metrics(data.decode("utf-8", "replace"), taken_s=taken_s, wall_s=wall_s)


# --- arithmetic -----------------------------------------------------------------------------


def _delta(prev: float | None, cur: float) -> float:
    """Counter increase; a counter that went down was reset (daemon restart) and counts from 0."""
    if prev is None or cur < prev:
        return cur
    return cur - prev


def _interval_s(prev: Sample | None, cur: Sample) -> float | None:
    if prev is None or cur.taken_s <= prev.taken_s:
        return None
    return cur.taken_s - prev.taken_s


def _rate(prev: Sample | None, cur: Sample, name: str, key: Labels) -> float | None:
    dt = _interval_s(prev, cur)
    if prev is None or dt is None:
        return None
    return _delta(prev.family(name).get(key, 0.0), cur.family(name)[key]) / dt


def estimate_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, cumulative count) pairs.

    Linear interpolation inside the bucket, like Prometheus' histogram_quantile: the first
    bucket starts at 0, and a rank in the +Inf bucket answers the highest finite bound.
    None if the histogram is empty.
    """
    ordered = sorted(buckets)
    if not ordered or not ordered[-1][1] > 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, max(below, count)
    return lower


def _histograms(sample: Sample) -> dict[str, dict[float, float]]:
    """op -> {upper bound: cumulative count} from the duration histogram's _bucket series."""
    out: dict[str, dict[float, float]] = {}
    for key, value in sample.family(BUCKETS).items():
        labels = dict(key)
        try:
            bound = float(labels.get("le", ""))
        except ValueError:
            continue
        out.setdefault(labels.get("op", ""), {})[bound] = value
    return out


def _latency_buckets(prev: Mapping[float, float] | None,
                     cur: Mapping[float, float]) -> list[tuple[float, float]]:
    """The buckets that moved since prev; all of cur if none did (or the counters reset)."""
    if prev is not None:
        moved = [(le, count - prev.get(le, 0.0)) for le, count in cur.items()]
        if all(d >= 0 for _, d in moved) and any(d > 0 for _, d in moved):
            return moved
    return list(cur.items())


# --- rendering ------------------------------------------------------------------------------


def _printable(text: str) -> str:
    # ASCII only: a terminal over ssh may run a non-UTF-8 locale, where curses rejects the rest.
    return "".join(c if " " <= c <= "~" else "?" for c in text)


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 100:
        return f"{value:.1f}"
    return _fmt_count(value)


def _fmt_count(value: float) -> str:
    for limit, div, unit in ((1e6, 1.0, ""), (1e9, 1e6, "M"), (1e12, 1e9, "G")):
        if value < limit:
            return f"{value / div:.0f}{unit}" if not unit else f"{value / div:.1f}{unit}"
    return f"{value / 1e12:.1f}T"


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1e-2:
        return f"{value * 1e3:.2f}ms"
    if value < 1.0:
        return f"{value * 1e3:.0f}ms"
    return f"{value:.2f}s"


def _left_right(left: str, right: str, width: int) -> str:
    gap = width - len(left) - len(right)
    if gap >= 1:
        return left + " " * gap + right
    return left


def _header(prev: Sample | None, cur: Sample, width: int, view: str) -> list[str]:
    states = cur.by_label(_P + "subtrees", "state")
    first = _left_right(
        f"fusemount top  {view}" if view else "fusemount top",
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(cur.wall_s)), width)

    def num(name: str) -> str:
        value = cur.value(_P + name)
        return "-" if value is None else _fmt_count(value)

    tables = (f"subtrees {states.get('attached', 0):.0f} attached, "
              f"{states.get('failed', 0):.0f} failed  holders {num('holders')}  "
              f"open files {num('open_files')}  inodes {num('inodes')}")
    limits = cur.by_label(_P + "limit", "limit")
    used = cur.by_label(_P + "limit_used", "limit")
    parts = []
    for name, value in used.items():
        cap = limits.get(name)
        mark = "!" if cap and value >= 0.9 * cap else ""
        cap_text = "?" if cap is None else _fmt_count(cap)
        parts.append(f"{name.removeprefix('max_')} {_fmt_count(value)}/{cap_text}{mark}")
    limit_line = "limits  " + "  ".join(parts) if parts else "limits  -"

    rates = [_rate(prev, cur, REQUESTS, key) for key in cur.family(REQUESTS)]
    errors = [_rate(prev, cur, ERRORS, key) for key in cur.family(ERRORS)]
    no_rates = _interval_s(prev, cur) is None
    total_rate = None if no_rates else sum(r or 0.0 for r in rates)
    error_rate = None if no_rates else sum(r or 0.0 for r in errors)
    activity = (f"fds held {num('held_descriptors')}, process {num('process_descriptors')}  "
                f"requests {_fmt_rate(total_rate)}/s  errors {_fmt_rate(error_rate)}/s")
    control = cur.family(CONTROL)
    if control:
        ok = sum(v for k, v in control.items() if dict(k).get("result") == "ok")
        refused = sum(control.values()) - ok
        activity += f"  ctl {_fmt_count(ok)} ok, {_fmt_count(refused)} refused"
    return [first, tables, limit_line, activity]


def _op_rows(prev: Sample | None, cur: Sample) -> list[str]:
    prev_hist = _histograms(prev) if prev is not None else {}
    cur_hist = _histograms(cur)
    errors_by_op: dict[str, dict[str, float]] = {}
    error_rates: dict[str, float] = {}
    for key, value in cur.family(ERRORS).items():
        labels = dict(key)
        op = labels.get("op", "")
        errors_by_op.setdefault(op, {})[labels.get("errno", "?")] = value
        rate = _rate(prev, cur, ERRORS, key)
        if rate is not None:
            error_rates[op] = error_rates.get(op, 0.0) + rate

    rows: list[tuple[float, float, str, str]] = []
    for key, total in cur.family(REQUESTS).items():
        op = dict(key).get("op", "")
        rate = _rate(prev, cur, REQUESTS, key)
        hist = cur_hist.get(op)
        quantiles: Iterable[float | None] = (None,) * len(_QUANTILES)
        if hist is not None:
            buckets = _latency_buckets(prev_hist.get(op), hist)
            quantiles = (estimate_quantile(q, buckets) for q in _QUANTILES)
        errs = errors_by_op.get(op, {})
        top = max(errs.items(), key=lambda item: (item[1], item[0]), default=None)
        top_text = "" if top is None else f"{top[0]}:{_fmt_count(top[1])}"
        err_rate = None if rate is None else error_rates.get(op, 0.0)
        p50, p95, p99 = (_fmt_seconds(v) for v in quantiles)
        text = (f"{op[:13]:<13} {_fmt_rate(rate):>8} {_fmt_count(total):>9} "
                f"{_fmt_rate(err_rate):>7} {p50:>7} {p95:>7} {p99:>7}  {top_text}")
        rows.append((-(rate or 0.0), -total, op, text))
    return [text for *_, text in sorted(rows)]


def _subtree_rows(prev: Sample | None, cur: Sample) -> list[str] | None:
    """None if the daemon publishes no per-subtree metrics."""
    requests = cur.family(SUBTREE_REQUESTS)
    open_files = cur.by_label(SUBTREE_OPEN_FILES, "subtree")
    if not requests and SUBTREE_OPEN_FILES not in cur.series:
        return None
    names = {dict(key).get("subtree", ""): key for key in requests}
    rows: list[tuple[float, str, str]] = []
    for name in sorted(set(names) | set(open_files)):
        key = names.get(name)
        rate = None if key is None else _rate(prev, cur, SUBTREE_REQUESTS, key)
        total = "-" if key is None else _fmt_count(requests[key])
        opened = open_files.get(name)
        open_text = "-" if opened is None else _fmt_count(opened)
        rows.append((-(rate or 0.0), name,
                     f"{name[:24]:<24} {_fmt_rate(rate):>8} {total:>9} {open_text:>6}"))
    return [text for *_, text in sorted(rows)]


def _fit(title: str, rows: list[str], room: int, what: str) -> list[str]:
    """title plus as many rows as room allows; the last line says how many were left out."""
    if room <= 0:
        return []
    if 1 + len(rows) <= room:
        return [title, *rows]
    if room == 1:
        return [title]
    shown = room - 2
    return [title, *rows[:shown], f"  ... {len(rows) - shown} more {what}"]


def render_frame(prev: Sample | None, cur: Sample, width: int, height: int, *,
                 view: str = "", status: str = "") -> list[str]:
    """The screen for the readings prev (None on the first frame) and cur.

    Pure: at most height lines of at most width printable ASCII characters each; rates and
    interval percentiles need prev (shown as "-" without it). status replaces the footer.
    """
    if width <= 0 or height <= 0:
        return []
    head = _header(prev, cur, width, view)
    # A small terminal keeps the title and the request rates, so the op table still shows.
    head = [head[0], head[3]] if height < _FULL_HEADER_MIN_HEIGHT else [*head, ""]
    dt = _interval_s(prev, cur)
    footer = status or ("q quit  rates from the next sample" if dt is None else
                        f"q quit  rates over {dt:.1f}s; latency over it (idle ops: since start)")
    ops = _op_rows(prev, cur)
    subtrees = _subtree_rows(prev, cur)
    room = max(0, height - len(head) - 1)
    ops_need = 1 + len(ops)
    sub_need = 0 if subtrees is None else 2 + len(subtrees)
    if ops_need + sub_need <= room:
        ops_room, sub_room = ops_need, sub_need
    else:
        # The subtree section keeps a third of the room (at least its title and a few rows),
        # the op table gets the rest, and whichever needs less gives the other its surplus.
        # On a tiny terminal the op table alone is shown.
        sub_room = min(sub_need, max(5, room // 3)) if room >= 8 else 0
        ops_room = min(ops_need, room - sub_room)
        sub_room = min(sub_need, room - ops_room)
    body = _fit(OPS_TITLE, ops, ops_room, "ops")
    if subtrees is not None and sub_room >= 2:
        body += ["", *_fit(SUBTREES_TITLE, subtrees, sub_room - 1, "subtrees")]
    lines = [*head, *body]
    lines = [*lines[: height - 1], footer] if height > 1 else [footer]
    return [_printable(line)[:width] for line in lines]


# --- the terminal ---------------------------------------------------------------------------


class _Sampler:
    """Reads the metrics file every interval_s in a daemon thread; a hung view hangs only it."""

    def __init__(self, path: str, interval_s: float) -> None:
        self.readings: queue.SimpleQueue[Sample | str] = queue.SimpleQueue()
        self._path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fusemount-top", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # not joined: a read stuck in a dead view must not delay the exit

    def _loop(self) -> None:
        due = time.monotonic() + self._interval_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + self._interval_s, time.monotonic())
            try:
                self.readings.put(read_sample(self._path))
            except OSError as exc:
                self.readings.put(f"cannot read {self._path}: {exc.strerror or exc}")


def _draw(screen: curses.window, lines: list[str]) -> None:
    screen.erase()
    for y, line in enumerate(lines):
        bold = line.startswith((OPS_TITLE[:8], SUBTREES_TITLE[:8]))
        # The bottom-right cell cannot take the cursor past it: the text is there all the same.
        with contextlib.suppress(curses.error):
            screen.addstr(y, 0, line, curses.A_BOLD if bold else curses.A_NORMAL)
    screen.refresh()


def _loop(screen: curses.window, view: str, path: str, first: Sample,
          interval_s: float) -> int:
    with contextlib.suppress(curses.error):  # terminals without an invisible cursor still work
        curses.curs_set(0)
    screen.keypad(True)
    screen.timeout(_KEY_POLL_MS)
    prev: Sample | None = None
    cur, error, shown, answered_s, dirty = first, "", "", time.monotonic(), True
    with _Sampler(path, interval_s) as sampler:
        while True:
            while not sampler.readings.empty():
                item = sampler.readings.get()
                answered_s = time.monotonic()
                if isinstance(item, Sample):
                    prev, cur, error = cur, item, ""
                else:
                    error = item
                dirty = True
            # A read stuck in a hung view never reports: say so rather than show stale rates.
            silent_s = time.monotonic() - answered_s
            status = error or (f"no answer from {path} for {silent_s:.0f}s"
                               if silent_s > 3 * interval_s + 1 else "")
            if dirty or status != shown:
                height, width = screen.getmaxyx()
                _draw(screen, render_frame(prev, cur, width, height, view=view, status=status))
                shown, dirty = status, False
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return 0
            if key == curses.KEY_RESIZE:
                curses.update_lines_cols()
                dirty = True


def _describe(view: str, path: str, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"fusemount top: {path}: permission denied; metrics are for admins "
                "(root or a member of access.admins)")
    if exc.errno == errno.ENOENT:
        return f"fusemount top: {view} is not a fusemount view (no .fusemount/metrics)"
    return f"fusemount top: cannot read {path}: {exc.strerror or exc}"


def main(view: str, interval_s: float = 1.0) -> int:
    """Run the live view of VIEW until q or Ctrl-C; 0 then, 1 if metrics cannot be read.

    Without a terminal on stdin and stdout it prints one frame (two readings interval_s
    apart) instead, so `fusemount top VIEW | cat` shows rates too.
    """
    if not interval_s > 0:
        print(f"fusemount top: the interval must be positive, not {interval_s}",
              file=sys.stderr)
        return 2
    path = os.path.join(view, ".fusemount", "metrics")
    try:
        first = read_sample(path)
    except OSError as exc:
        print(_describe(view, path, exc), file=sys.stderr)
        return 1
    try:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            time.sleep(interval_s)
            cur = read_sample(path)
            size = shutil.get_terminal_size((80, 24))
            print("\n".join(render_frame(first, cur, size.columns, 1000, view=view)))
            return 0
        # ncurses lets LINES/COLUMNS in the environment (some shells and test runners export
        # them) override the terminal's real size, resizes included: the size must be the tty's.
        for name in ("LINES", "COLUMNS"):
            os.environ.pop(name, None)
        result: int = curses.wrapper(_loop, view, path, first, interval_s)
        return result
    except KeyboardInterrupt:
        return 0  # curses.wrapper has restored the terminal on the way out
    except OSError as exc:
        print(_describe(view, path, exc), file=sys.stderr)
        return 1
    except curses.error as exc:
        print(f"fusemount top: cannot drive this terminal (TERM={os.environ.get('TERM')}): "
              f"{exc}", file=sys.stderr)
        return 1
