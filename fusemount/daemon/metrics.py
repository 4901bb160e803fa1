"""Daemon metrics, rendered in the Prometheus text exposition format 0.0.4 (SPEC 4 `metrics`).

How this works: `observe()` runs for every FUSE request, so it does a dict lookup,
a bisect over fixed bucket bounds and two additions; everything else (cumulative
buckets, totals, errno names, escaping) is computed by `render()`, which runs only
when an admin reads the `metrics` file. Gauges are pulled from callbacks at render
time, so the tables they describe never push updates here.

Never: allocate or format text in `observe()` after an op's first request; let a
failing gauge callback break the whole file (it is logged and its family left
empty). Call everything from one thread (the trio thread): there is no lock.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

PREFIX = "fusemount_"

# Upper bounds in seconds, 10 µs .. 10 s: a cached getattr sits at the bottom, a read
# stalled on a dead network source at the top. Fixed, so observe() never allocates.
BUCKETS_S: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005,
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

_REQUESTS = PREFIX + "requests_total"
_ERRORS = PREFIX + "request_errors_total"
_DURATION = PREFIX + "request_duration_seconds"
_BUILTIN = frozenset({_REQUESTS, _ERRORS, _DURATION})

GaugeFn = Callable[[], Iterable[tuple[dict[str, str], float]]]
_LabelKey = tuple[tuple[str, str], ...]


class _OpStats:
    """Per-op counters; the list and dict are created once, on the op's first request."""

    __slots__ = ("counts", "errors", "sum_s")

    def __init__(self) -> None:
        # counts[i]: requests with duration <= BUCKETS_S[i] and > the bound before;
        # the last slot is +Inf. Cumulated only in render().
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0
        self.errors: dict[int, int] = {}


class Metrics:
    """The daemon's metrics registry."""

    def __init__(self) -> None:
        self._ops: dict[str, _OpStats] = {}
        self._counters: dict[str, dict[_LabelKey, float]] = {}
        self._help: dict[str, str] = {}
        self._gauges: dict[str, tuple[str, GaugeFn]] = {}

    def observe(self, op: str, seconds: float, errno_: int = 0) -> None:
        """Count one FUSE request of op that took seconds and ended with errno_ (0: success)."""
        stats = self._ops.get(op)
        if stats is None:
            stats = self._ops[op] = _OpStats()
        stats.counts[bisect_left(BUCKETS_S, seconds)] += 1
        stats.sum_s += seconds
        if errno_:
            errors = stats.errors
            errors[errno_] = errors.get(errno_, 0) + 1

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1) -> None:
        """Add value (>= 0) to the counter name with labels, e.g. control commands.

        name is the full metric name (`fusemount_..._total`); ValueError for a bad
        name, label name or negative value.
        """
        if value < 0 or math.isnan(value):
            raise ValueError(f"counter {name}: cannot add {value}")
        series = self._counters.get(name)
        if series is None:
            self._check_new_name(name)
            series = self._counters[name] = {}
        key = _label_key(labels or {})
        series[key] = series.get(key, 0.0) + value

    def describe(self, name: str, help_: str) -> None:
        """Set the HELP text of a counter fed by inc()."""
        self._help[name] = help_

    def set_gauge_source(self, name: str, help_: str, fn: GaugeFn) -> None:
        """Render gauge name from fn() at each render: (labels, value) pairs.

        Replaces an earlier source of the same name. ValueError for a bad name or one
        already used by a counter.
        """
        if name not in self._gauges:
            self._check_new_name(name)
        self._gauges[name] = (help_, fn)

    def set_process_info(self, *, view: str, config: str | None, state: str) -> None:
        """`fusemount_info` (pid, view, config and state paths as labels) and
        `fusemount_start_time_seconds`: what `fusemount status` shows of the daemon."""
        started = (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
                   + _process_start_since_boot())
        info = {"pid": str(os.getpid()), "view": view, "config": config or "",
                "state": os.path.abspath(state)}
        self.set_gauge_source("fusemount_info",
                              "The daemon: pid, view, config and state paths",
                              lambda: [(info, 1.0)])
        self.set_gauge_source("fusemount_start_time_seconds",
                              "Start time of the process since the epoch in seconds",
                              lambda: [({}, started)])

    def render(self) -> str:
        """The whole exposition, `\\n`-terminated; may call every gauge callback."""
        out: list[str] = []
        ops = sorted(self._ops.items())

        _header(out, _REQUESTS, "FUSE requests answered, by operation.", "counter")
        for op, stats in ops:
            out.append(f"{_REQUESTS}{{op={_quote(op)}}} {sum(stats.counts)}")

        _header(out, _ERRORS, "FUSE requests answered with an error, by errno.", "counter")
        for op, stats in ops:
            for code, count in sorted(stats.errors.items()):
                name = errno.errorcode.get(code, str(code))
                out.append(f"{_ERRORS}{{op={_quote(op)},errno={_quote(name)}}} {count}")

        _header(out, _DURATION, "Time to answer a FUSE request, by operation.", "histogram")
        for op, stats in ops:
            label = f"op={_quote(op)}"
            cumulative = 0
            for bound, count in zip(BUCKETS_S, stats.counts, strict=False):
                cumulative += count
                out.append(f'{_DURATION}_bucket{{{label},le="{_number(bound)}"}} {cumulative}')
            cumulative += stats.counts[-1]
            out.append(f'{_DURATION}_bucket{{{label},le="+Inf"}} {cumulative}')
            out.append(f"{_DURATION}_sum{{{label}}} {_number(stats.sum_s)}")
            out.append(f"{_DURATION}_count{{{label}}} {cumulative}")

        for name, series in sorted(self._counters.items()):
            _header(out, name, self._help.get(name, name), "counter")
            for key, value in sorted(series.items()):
                out.append(f"{name}{_labels(key)} {_number(value)}")

        for name, (help_, fn) in sorted(self._gauges.items()):
            _header(out, name, help_, "gauge")
            try:
                out.extend(_gauge_lines(name, fn))
            except Exception:  # one broken table must not hide every other metric
                log.exception("metrics: gauge %s failed; rendered without samples", name)

        return "\n".join(out) + "\n"

    def _check_new_name(self, name: str) -> None:
        if not name.startswith(PREFIX) or not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not a {PREFIX}* metric name")
        if name in _BUILTIN or name in self._counters or name in self._gauges:
            raise ValueError(f"metric name {name!r} is already in use")
        # A histogram reserves its _bucket/_sum/_count series names too.
        if any(name == f"{_DURATION}{suffix}" for suffix in ("_bucket", "_sum", "_count")):
            raise ValueError(f"metric name {name!r} is already in use")


def _gauge_lines(name: str, fn: GaugeFn) -> list[str]:
    lines: list[str] = []
    seen: set[_LabelKey] = set()
    for labels, value in fn():
        key = _label_key(labels)
        if key in seen:
            # Two samples with one label set make the whole exposition invalid.
            raise ValueError(f"gauge {name}: labels {dict(key)} returned twice")
        seen.add(key)
        lines.append(f"{name}{_labels(key)} {_number(float(value))}")
    return lines


def _label_key(labels: dict[str, str]) -> _LabelKey:
    for label, value in labels.items():
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"bad label name {label!r}")
        if not isinstance(value, str):
            raise ValueError(f"label {label}: value {value!r} is not a string")
    return tuple(sorted(labels.items()))


def _labels(key: _LabelKey) -> str:
    if not key:
        return ""
    return "{" + ",".join(f"{name}={_quote(value)}" for name, value in key) + "}"


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _header(out: list[str], name: str, help_: str, kind: str) -> None:
    # HELP escapes only backslash and newline (format 0.0.4).
    text = help_.replace("\\", "\\\\").replace("\n", "\\n")
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _process_start_since_boot() -> float:
    """Seconds from boot to this process's start (CLOCK_BOOTTIME, from /proc/self/stat)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(") ", 1)[1].split()[19])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
