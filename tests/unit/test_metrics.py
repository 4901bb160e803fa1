"""Metrics (SPEC 4 `metrics`): a strict reading of the text exposition format 0.0.4."""

from __future__ import annotations

import errno
import itertools
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from fusemount.daemon.metrics import BUCKETS_S, Metrics

# -- a small, strict checker for the Prometheus text format 0.0.4 -------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)")
_HELP = re.compile(rf"# HELP (?P<name>{_NAME}) (?P<text>.*)")
_TYPE = re.compile(rf"# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|histogram|summary|untyped)")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_FLOAT = re.compile(r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")

Labels = dict[str, str]


@dataclass
class Family:
    type: str
    help: str | None = None
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)


class FormatError(AssertionError):
    pass


def _unescape_help(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in ("\\", "n"):
                raise FormatError(f"bad escape in HELP: {text!r}")
            out.append("\n" if nxt == "n" else "\\")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_labels(text: str) -> Labels:
    labels: Labels = {}
    i = 0
    while i < len(text):
        m = _LABEL_NAME.match(text, i)
        if not m or text[m.end() : m.end() + 2] != '="':
            raise FormatError(f"bad label syntax at {text[i:]!r}")
        name, i = m.group(), m.end() + 2
        value: list[str] = []
        while True:
            if i >= len(text):
                raise FormatError(f"unterminated label value in {text!r}")
            ch = text[i]
            if ch == "\\":
                nxt = text[i + 1 : i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise FormatError(f"bad escape in label value {text!r}")
                value.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
                i += 2
            elif ch == '"':
                i += 1
                break
            elif ch == "\n":
                raise FormatError("raw newline in label value")
            else:
                value.append(ch)
                i += 1
        if name in labels:
            raise FormatError(f"label {name} repeated")
        labels[name] = "".join(value)
        if i < len(text):
            if text[i] != ",":
                raise FormatError(f"expected ',' in {text!r}")
            i += 1
    return labels


def _parse_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise FormatError(f"bad value {text!r}")
    return float(text)


def _family_of(name: str, families: dict[str, Family]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base, Family("")).type == "histogram":
            return base
    return name


def parse_exposition(text: str) -> dict[str, Family]:
    """Parse text strictly; raise FormatError on anything format 0.0.4 does not allow."""
    if not text.endswith("\n"):
        raise FormatError("exposition does not end with a newline")
    families: dict[str, Family] = {}
    current: str | None = None
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for line in text[:-1].split("\n"):
        if m := _HELP.fullmatch(line):
            name = m["name"]
            family = families.get(name)
            if family is not None and (family.help is not None or family.samples):
                raise FormatError(f"second HELP for {name}")
            families.setdefault(name, Family("untyped")).help = _unescape_help(m["text"])
            current = name
        elif m := _TYPE.fullmatch(line):
            name = m["name"]
            family = families.get(name)
            if family is not None and (family.type != "untyped" or family.samples):
                raise FormatError(f"TYPE for {name} repeated or after its samples")
            families.setdefault(name, Family("untyped")).type = m["type"]
            current = name
        elif m := _SAMPLE.fullmatch(line):
            name = m["name"]
            base = _family_of(name, families)
            if base != current:
                raise FormatError(f"sample {name} outside its family block (or without TYPE)")
            labels = _parse_labels(m["labels"] or "")
            series = (name, tuple(sorted(labels.items())))
            if series in seen_series:
                raise FormatError(f"series {series} repeated")
            seen_series.add(series)
            families[base].samples.append((name, labels, _parse_float(m["value"])))
        else:
            raise FormatError(f"line is neither HELP, TYPE nor a sample: {line!r}")
    for name, family in families.items():
        if family.type == "untyped":
            raise FormatError(f"{name} has no TYPE")
        if family.type == "counter" and any(v < 0 for _, _, v in family.samples):
            raise FormatError(f"counter {name} is negative")
        if family.type == "histogram":
            _check_histogram(name, family)
    return families


def _check_histogram(name: str, family: Family) -> None:
    groups: dict[tuple[tuple[str, str], ...], dict[str, list[tuple[float, float]]]] = {}
    for sample, labels, value in family.samples:
        suffix = sample.removeprefix(name)
        labels = dict(labels)  # the caller's samples keep their le
        le = labels.pop("le", None)
        if (le is None) != (suffix != "_bucket"):
            raise FormatError(f"{sample}: le label misplaced")
        group = groups.setdefault(tuple(sorted(labels.items())), {})
        bound = _parse_float(le) if le is not None else math.nan
        group.setdefault(suffix, []).append((bound, value))
    for key, group in groups.items():
        buckets = group.get("_bucket", [])
        if [b for b, _ in buckets] != sorted(b for b, _ in buckets) or not buckets:
            raise FormatError(f"{name}{key}: buckets missing or not in ascending le order")
        counts = [v for _, v in buckets]
        if any(a > b for a, b in itertools.pairwise(counts)):
            raise FormatError(f"{name}{key}: buckets are not cumulative")
        if buckets[-1][0] != math.inf:
            raise FormatError(f"{name}{key}: no +Inf bucket")
        if len(group.get("_count", [])) != 1 or len(group.get("_sum", [])) != 1:
            raise FormatError(f"{name}{key}: needs exactly one _sum and one _count")
        if group["_count"][0][1] != buckets[-1][1]:
            raise FormatError(f"{name}{key}: +Inf bucket != _count")


def value_of(families: dict[str, Family], sample: str, **labels: str) -> float:
    base = _family_of(sample, families)
    found = [v for n, lab, v in families[base].samples if n == sample and lab == labels]
    assert len(found) == 1, (sample, labels, families[base].samples)
    return found[0]


# -- the checker itself must be able to fail ----------------------------------------

GOOD = '# HELP x_total A thing.\n# TYPE x_total counter\nx_total{a="1"} 3\n'
BAD_EXPOSITIONS = {
    "no_trailing_newline": GOOD[:-1],
    "bad_metric_name": GOOD.replace('x_total{a="1"}', '1x_total{a="1"}'),
    "bad_label_escape": GOOD.replace('"1"', '"\\t"'),
    "unquoted_label": GOOD.replace('"1"', "1"),
    "bad_value": GOOD.replace("} 3", "} three"),
    "no_type": "x 1\n",
    "duplicate_series": GOOD + 'x_total{a="1"} 4\n',
    "negative_counter": GOOD.replace("} 3", "} -3"),
    "not_cumulative": (
        '# TYPE h histogram\nh_bucket{le="1"} 5\nh_bucket{le="+Inf"} 4\nh_sum 1\nh_count 4\n'
    ),
    "inf_not_count": (
        '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n'
    ),
    "no_inf_bucket": '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
    "split_family": GOOD + "# TYPE y gauge\ny 1\n" + 'x_total{a="2"} 1\n',
}


def test_checker_accepts_a_valid_exposition() -> None:
    assert value_of(parse_exposition(GOOD), "x_total", a="1") == 3


@pytest.mark.parametrize("text", BAD_EXPOSITIONS.values(), ids=BAD_EXPOSITIONS.keys())
def test_checker_rejects_invalid_exposition(text: str) -> None:
    with pytest.raises(FormatError):
        parse_exposition(text)


# -- the registry -------------------------------------------------------------------


def test_metrics_empty_registry_renders_valid_exposition() -> None:
    families = parse_exposition(Metrics().render())
    assert families["fusemount_requests_total"].type == "counter"
    assert families["fusemount_request_errors_total"].type == "counter"
    assert families["fusemount_request_duration_seconds"].type == "histogram"


def test_metrics_render_counts_requests_errors_and_durations() -> None:
    m = Metrics()
    m.observe("lookup", 0.00002)
    m.observe("lookup", 0.3, errno.ENOENT)
    m.observe("lookup", 0.001, errno.ENOENT)
    m.observe("read", 0.004, errno.EIO)
    m.observe("getattr", 0.00001)
    families = parse_exposition(m.render())
    assert value_of(families, "fusemount_requests_total", op="lookup") == 3
    assert value_of(families, "fusemount_requests_total", op="read") == 1
    errors = "fusemount_request_errors_total"
    assert value_of(families, errors, op="lookup", errno="ENOENT") == 2
    assert value_of(families, errors, op="read", errno="EIO") == 1
    assert not [s for s in families[errors].samples if s[1]["op"] == "getattr"]
    duration = "fusemount_request_duration_seconds"
    assert value_of(families, duration + "_count", op="lookup") == 3
    assert value_of(families, duration + "_sum", op="lookup") == pytest.approx(0.30102)


def test_metrics_histogram_buckets_are_cumulative_with_inclusive_bounds() -> None:
    m = Metrics()
    for seconds in (0.000005, 0.00001, 0.003, 7.0, 60.0):
        m.observe("write", seconds)
    families = parse_exposition(m.render())
    buckets = {
        float(labels["le"]): value
        for name, labels, value in families["fusemount_request_duration_seconds"].samples
        if name.endswith("_bucket")
    }
    assert sorted(buckets) == [*BUCKETS_S, math.inf]
    # le is "less than or equal": 10 µs itself falls in the 10 µs bucket.
    assert buckets[0.00001] == 2
    assert buckets[0.0025] == 2
    assert buckets[0.005] == 3
    assert buckets[5.0] == 3
    assert buckets[10.0] == 4
    assert buckets[math.inf] == 5


def test_metrics_ten_thousand_observations_are_counted_exactly() -> None:
    m = Metrics()
    ops = ("lookup", "getattr", "read", "readdirplus")
    for i in range(10_000):
        m.observe(ops[i % 4], (i % 100) * 0.0001, errno.ENOENT if i % 10 == 0 else 0)
    families = parse_exposition(m.render())
    for op in ops:
        assert value_of(families, "fusemount_requests_total", op=op) == 2500
        assert value_of(families, "fusemount_request_duration_seconds_count", op=op) == 2500
        inf = value_of(families, "fusemount_request_duration_seconds_bucket", op=op, le="+Inf")
        assert inf == 2500
    errors = families["fusemount_request_errors_total"].samples
    assert sum(v for _, _, v in errors) == 1000
    total_sum = sum(
        v
        for n, _, v in families["fusemount_request_duration_seconds"].samples
        if n.endswith("_sum")
    )
    assert total_sum == pytest.approx(sum((i % 100) * 0.0001 for i in range(10_000)))


def test_metrics_label_values_are_escaped() -> None:
    nasty = 'a"b\\c\nd'
    m = Metrics()
    m.observe(nasty, 0.001, errno.EPERM)
    m.inc("fusemount_control_commands_total", {"verb": nasty, "result": "ok"})
    m.set_gauge_source("fusemount_subtrees", 'Sub\\trees\n"x"', lambda: [({"name": nasty}, 1)])
    text = m.render()
    families = parse_exposition(text)
    assert value_of(families, "fusemount_requests_total", op=nasty) == 1
    assert value_of(families, "fusemount_control_commands_total", verb=nasty, result="ok") == 1
    assert value_of(families, "fusemount_subtrees", name=nasty) == 1
    assert families["fusemount_subtrees"].help == 'Sub\\trees\n"x"'


def test_metrics_counters_add_up_by_label_set() -> None:
    m = Metrics()
    m.describe("fusemount_control_commands_total", "Control commands, by verb and result.")
    for _ in range(3):
        m.inc("fusemount_control_commands_total", {"verb": "attach", "result": "ok"})
    m.inc("fusemount_control_commands_total", {"result": "ENOSPC", "verb": "attach"}, 2)
    m.inc("fusemount_audit_records_dropped_total")
    families = parse_exposition(m.render())
    family = families["fusemount_control_commands_total"]
    assert family.type == "counter"
    assert family.help == "Control commands, by verb and result."
    name = "fusemount_control_commands_total"
    assert value_of(families, name, verb="attach", result="ok") == 3
    assert value_of(families, name, verb="attach", result="ENOSPC") == 2
    assert value_of(families, "fusemount_audit_records_dropped_total") == 1


def test_metrics_gauges_are_read_at_render_time() -> None:
    open_files = [3]

    def limits() -> Iterable[tuple[dict[str, str], float]]:
        yield {"limit": "max_open_files", "what": "max"}, 4096
        yield {"limit": "max_open_files", "what": "used"}, open_files[0]

    m = Metrics()
    m.set_gauge_source("fusemount_open_files", "Open files.", lambda: [({}, open_files[0])])
    m.set_gauge_source("fusemount_limit", "Limits and their use.", limits)
    assert value_of(parse_exposition(m.render()), "fusemount_open_files") == 3
    open_files[0] = 17
    families = parse_exposition(m.render())
    assert families["fusemount_open_files"].type == "gauge"
    assert value_of(families, "fusemount_open_files") == 17
    assert value_of(families, "fusemount_limit", limit="max_open_files", what="used") == 17
    assert value_of(families, "fusemount_limit", limit="max_open_files", what="max") == 4096


def test_metrics_broken_gauge_is_logged_and_the_rest_still_renders(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> Iterable[tuple[dict[str, str], float]]:
        yield {"a": "1"}, 1
        raise RuntimeError("table gone")

    m = Metrics()
    m.set_gauge_source("fusemount_broken", "Broken.", broken)
    m.set_gauge_source("fusemount_twice", "Same labels twice.", lambda: [({}, 1), ({}, 2)])
    m.set_gauge_source("fusemount_holders", "Holders.", lambda: [({"subtree": "a"}, 2)])
    with caplog.at_level(logging.ERROR, logger="fusemount.metrics"):
        families = parse_exposition(m.render())
    assert families["fusemount_broken"].samples == []
    assert families["fusemount_twice"].samples == []
    assert value_of(families, "fusemount_holders", subtree="a") == 2
    assert len(caplog.records) == 2


def test_metrics_unknown_errno_is_rendered_as_its_number() -> None:
    m = Metrics()
    m.observe("ioctl", 0.0, 9999)
    families = parse_exposition(m.render())
    assert value_of(families, "fusemount_request_errors_total", op="ioctl", errno="9999") == 1


@pytest.mark.parametrize(
    "bad_call",
    [
        lambda m: m.inc("control_commands_total"),
        lambda m: m.inc("fusemount_bad-name"),
        lambda m: m.inc("fusemount_requests_total"),
        lambda m: m.inc("fusemount_request_duration_seconds_bucket"),
        lambda m: m.inc("fusemount_x_total", {"0bad": "v"}),
        lambda m: m.inc("fusemount_x_total", {"__reserved": "v"}),
        lambda m: m.inc("fusemount_x_total", {"n": 1}),
        lambda m: m.inc("fusemount_x_total", None, -1),
        lambda m: m.set_gauge_source("fusemount_taken_total", "", list),
    ],
    ids=[
        "no_prefix",
        "bad_char",
        "builtin",
        "histogram_series",
        "label_digit",
        "label_reserved",
        "label_not_str",
        "negative",
        "gauge_over_counter",
    ],
)
def test_metrics_bad_names_labels_and_values_are_refused(bad_call: object) -> None:
    m = Metrics()
    m.inc("fusemount_taken_total")
    assert callable(bad_call)
    with pytest.raises(ValueError):
        bad_call(m)
    parse_exposition(m.render())
