"""`fusemount top VIEW`: parsing the metrics file, rendering frames, and the live view in tmux.

The unit tests feed render_frame() samples made by the daemon's own Metrics renderer, so the
parser is held to what the daemon really writes. The end-to-end tests run top in an 80x24
tmux pane against a live view and read the screen back.
"""

from __future__ import annotations

import errno
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusemount.cli.top import (
    OPS_TITLE,
    SUBTREES_TITLE,
    Sample,
    estimate_quantile,
    main,
    parse_metrics,
    render_frame,
)
from fusemount.daemon.metrics import Metrics
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.users import SYSTEM_PYTHON, Users, run_as

REPO = Path(__file__).resolve().parents[2]
TOP_CODE = "import sys; from fusemount.cli.top import main; sys.exit(main(sys.argv[1]))"

# --- building samples -----------------------------------------------------------------------


def _metrics(
    requests: dict[str, list[float]] | None = None,
    errors: dict[tuple[str, int], int] | None = None,
    subtrees: dict[str, tuple[float, float]] | None = None,
    control: dict[tuple[str, str], int] | None = None,
) -> Metrics:
    """A Metrics registry with these requests (op -> durations), errors and gauges."""
    m = Metrics()
    for op, durations in (requests or {}).items():
        for seconds in durations:
            m.observe(op, seconds)
    for (op, code), count in (errors or {}).items():
        for _ in range(count):
            m.observe(op, 0.00001, code)
    m.set_gauge_source("fusemount_subtrees", "", lambda: [
        ({"state": "attached"}, 2.0), ({"state": "failed"}, 1.0)])
    m.set_gauge_source("fusemount_open_files", "", lambda: [({}, 7.0)])
    m.set_gauge_source("fusemount_inodes", "", lambda: [({}, 120.0)])
    m.set_gauge_source("fusemount_held_descriptors", "", lambda: [({}, 118.0)])
    m.set_gauge_source("fusemount_process_descriptors", "", lambda: [({}, 140.0)])
    m.set_gauge_source("fusemount_limit", "", lambda: [
        ({"limit": "max_open_files"}, 4096.0), ({"limit": "max_subtrees"}, 64.0)])
    m.set_gauge_source("fusemount_limit_used", "", lambda: [
        ({"limit": "max_open_files"}, 7.0), ({"limit": "max_subtrees"}, 63.0)])
    if subtrees is not None:
        rows = dict(subtrees)
        m.set_gauge_source("fusemount_subtree_requests_total", "", lambda: [
            ({"subtree": name}, total) for name, (total, _) in rows.items()])
        m.set_gauge_source("fusemount_subtree_open_files", "", lambda: [
            ({"subtree": name}, opened) for name, (_, opened) in rows.items()])
    for (verb, result), count in (control or {}).items():
        m.inc("fusemount_control_commands_total", {"verb": verb, "result": result}, count)
    return m


def _sample(m: Metrics, at_s: float) -> Sample:
    return parse_metrics(m.render(), taken_s=at_s, wall_s=1_700_000_000.0 + at_s)


def _row(lines: list[str], first_word: str) -> list[str]:
    """The whitespace-split table row whose first column is first_word."""
    rows = [line.split() for line in lines if line.split()[:1] == [first_word]]
    assert len(rows) == 1, f"one row for {first_word!r} expected in:\n" + "\n".join(lines)
    return rows[0]


def _cell(lines: list[str], first_word: str, column: int) -> float:
    """A number from a row on a screen that may be mid-redraw: NaN if it cannot be read."""
    rows = [line.split() for line in lines if line.split()[:1] == [first_word]]
    try:
        return float(rows[0][column]) if len(rows) == 1 else math.nan
    except (IndexError, ValueError):
        return math.nan


def _seconds(text: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * scale
    raise AssertionError(f"{text!r} is not a duration")


# Column indexes of an op row: OP REQ/S TOTAL ERR/S P50 P95 P99 [ERRNO:COUNT]
OP, RATE, TOTAL, ERR_RATE, P50, P95, P99, TOP_ERRNO = range(8)


# --- parse_metrics --------------------------------------------------------------------------


def test_parse_metrics_reads_labels_escapes_and_special_values() -> None:
    text = (
        "# HELP a help text\n"
        "# TYPE a gauge\n"
        'a{y="2",x="q\\"uo\\\\te\\nnl"} 3 1700000000000\n'
        "b +Inf\n"
        "c NaN\n"
        "  d{} -1.5e-3  \n"
        "{oops} 1\n"
        'e{x="1" 2\n'
        "f notanumber\n"
        "g 1 2 3\n"
        "\n"
    )
    sample = parse_metrics(text, taken_s=5.0, wall_s=6.0)
    assert sample.value("a", x='q"uo\\te\nnl', y="2") == 3
    assert sample.value("b") == math.inf
    c = sample.value("c")
    assert c is not None and math.isnan(c)
    assert sample.value("d") == -0.0015
    assert set(sample.series) == {"a", "b", "c", "d"}
    assert (sample.taken_s, sample.wall_s) == (5.0, 6.0)


def test_parse_metrics_reads_what_the_daemon_renders() -> None:
    m = _metrics(
        requests={"lookup": [0.00002, 0.00003, 0.3]},
        errors={("lookup", errno.ENOENT): 2},
        subtrees={"data": (42.0, 3.0)},
        control={("attach", "ok"): 4, ("detach", "EBUSY"): 1},
    )
    sample = parse_metrics(m.render())
    assert sample.value("fusemount_requests_total", op="lookup") == 5
    assert sample.value("fusemount_request_errors_total", op="lookup", errno="ENOENT") == 2
    assert sample.value("fusemount_request_duration_seconds_bucket", op="lookup",
                        le="2.5e-05") == 3
    assert sample.value("fusemount_request_duration_seconds_bucket", op="lookup",
                        le="+Inf") == 5
    assert sample.value("fusemount_request_duration_seconds_count", op="lookup") == 5
    assert sample.by_label("fusemount_subtrees", "state") == {"attached": 2, "failed": 1}
    assert sample.value("fusemount_subtree_requests_total", subtree="data") == 42
    assert sample.value("fusemount_control_commands_total", verb="detach",
                        result="EBUSY") == 1


# --- estimate_quantile ----------------------------------------------------------------------


def test_estimate_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.001, 0.0), (0.002, 100.0), (math.inf, 100.0)]
    assert estimate_quantile(0.5, buckets) == pytest.approx(0.0015)
    assert estimate_quantile(0.99, buckets) == pytest.approx(0.00199)


def test_estimate_quantile_starts_the_first_bucket_at_zero() -> None:
    assert estimate_quantile(0.5, [(0.01, 10.0), (math.inf, 10.0)]) == pytest.approx(0.005)


def test_estimate_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert estimate_quantile(0.99, [(1.0, 5.0), (10.0, 5.0), (math.inf, 10.0)]) == 10.0


def test_estimate_quantile_of_an_empty_histogram_is_none() -> None:
    assert estimate_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert estimate_quantile(0.5, []) is None


# --- render_frame ---------------------------------------------------------------------------


def test_render_frame_rates_come_from_the_delta_between_samples() -> None:
    before = _metrics({"lookup": [0.00002] * 100, "getattr": [0.00002] * 10},
                      {("lookup", errno.ENOENT): 10})
    after = _metrics({"lookup": [0.00002] * 150, "getattr": [0.00002] * 10},
                     {("lookup", errno.ENOENT): 14})
    lines = render_frame(_sample(before, 10.0), _sample(after, 12.0), 80, 24)
    lookup = _row(lines, "lookup")
    # (150 + 14) - (100 + 10) requests over 2 s; the 4 new ENOENT over 2 s
    assert float(lookup[RATE]) == pytest.approx(27.0)
    assert lookup[TOTAL] == "164"
    assert float(lookup[ERR_RATE]) == pytest.approx(2.0)
    assert lookup[TOP_ERRNO] == "ENOENT:14"
    getattr_ = _row(lines, "getattr")
    assert float(getattr_[RATE]) == 0.0
    assert float(getattr_[ERR_RATE]) == 0.0
    assert any("requests 27.0/s" in line and "errors 2.0/s" in line for line in lines)


def test_render_frame_first_frame_has_no_rates_but_has_percentiles() -> None:
    lines = render_frame(None, _sample(_metrics({"read": [0.003] * 10}), 1.0), 80, 24)
    read = _row(lines, "read")
    assert (read[RATE], read[ERR_RATE]) == ("-", "-")
    assert 0.0025 < _seconds(read[P50]) <= 0.005


def test_render_frame_percentiles_come_from_the_bucket_deltas() -> None:
    slow = [0.3] * 1000  # in the (0.25, 0.5] bucket
    fast = [0.00003] * 100  # in the (2.5e-05, 5e-05] bucket
    before = _metrics({"read": slow, "write": slow})
    after = _metrics({"read": slow + fast, "write": slow})
    lines = render_frame(_sample(before, 1.0), _sample(after, 2.0), 80, 24)
    read = _row(lines, "read")
    # Only the 100 fast requests happened in the interval; the cumulative p50 would be ~0.3 s.
    for column in (P50, P95, P99):
        assert 0.000025 < _seconds(read[column]) <= 0.00005, read
    assert _seconds(read[P50]) == pytest.approx(0.0000375, rel=0.05)
    # write was idle in the interval: its percentiles fall back to everything since start.
    write = _row(lines, "write")
    assert 0.25 < _seconds(write[P50]) <= 0.5, write


def test_render_frame_sorts_ops_by_request_rate() -> None:
    before = _metrics({"getattr": [0.00002] * 500, "lookup": [0.00002], "read": [0.00002]})
    after = _metrics({"getattr": [0.00002] * 501, "lookup": [0.00002] * 90,
                      "read": [0.00002] * 50})
    lines = render_frame(_sample(before, 0.0), _sample(after, 1.0), 80, 24)
    start = lines.index(OPS_TITLE)
    assert [line.split()[0] for line in lines[start + 1 : start + 4]] == [
        "lookup", "read", "getattr"]


def test_render_frame_counter_reset_counts_from_zero() -> None:
    before = _metrics({"lookup": [0.00002] * 100})
    after = _metrics({"lookup": [0.00002] * 6})  # the daemon restarted in between
    lines = render_frame(_sample(before, 0.0), _sample(after, 2.0), 80, 24)
    assert float(_row(lines, "lookup")[RATE]) == pytest.approx(3.0)


def test_render_frame_header_shows_tables_descriptors_and_limits() -> None:
    m = _metrics(control={("attach", "ok"): 4, ("detach", "EBUSY"): 1})
    lines = render_frame(None, _sample(m, 0.0), 80, 24, view="/mnt/view")
    text = "\n".join(lines)
    assert lines[0].startswith("fusemount top  /mnt/view")
    assert lines[0].endswith(time.strftime("%H:%M:%S", time.localtime(1_700_000_000.0)))
    assert "subtrees 2 attached, 1 failed" in text
    assert "open files 7" in text and "inodes 120" in text
    assert "fds held 118, process 140" in text
    assert "open_files 7/4096" in text
    assert "subtrees 63/64!" in text  # over 90% of the limit is marked
    assert "ctl 4 ok, 1 refused" in text


def test_render_frame_shows_the_subtree_section_only_when_published() -> None:
    without = render_frame(None, _sample(_metrics({"lookup": [0.1]}), 0.0), 80, 24)
    assert SUBTREES_TITLE not in without
    before = _metrics({"lookup": [0.1]}, subtrees={"data": (10.0, 0.0), "logs": (5.0, 2.0)})
    after = _metrics({"lookup": [0.1]}, subtrees={"data": (10.0, 1.0), "logs": (25.0, 3.0)})
    lines = render_frame(_sample(before, 0.0), _sample(after, 4.0), 80, 24)
    start = lines.index(SUBTREES_TITLE)
    assert lines[start + 1].split() == ["logs", "5.0", "25", "3"]
    assert lines[start + 2].split() == ["data", "0.0", "10", "1"]


def _busy_samples(ops: int, subtrees: int) -> tuple[Sample, Sample]:
    names = [f"op{i:02d}_with_a_long_name" for i in range(ops)]
    before = _metrics({name: [0.001] for name in names},
                      subtrees={f"subtree-{i}": (1.0, 0.0) for i in range(subtrees)})
    after = _metrics({name: [0.001] * (i + 2) for i, name in enumerate(names)},
                     {(name, errno.EACCES): 3 for name in names},
                     subtrees={f"subtree-{i}": (float(i + 2), 9.0) for i in range(subtrees)})
    return _sample(before, 0.0), _sample(after, 1.0)


def test_render_frame_fits_80x24_and_says_what_it_left_out() -> None:
    prev, cur = _busy_samples(40, 30)
    lines = render_frame(prev, cur, 80, 24, view="/a/view/" + "x" * 200)
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines), lines
    assert OPS_TITLE in lines and SUBTREES_TITLE in lines
    assert any(line.strip().startswith("...") and line.endswith("more ops") for line in lines)
    assert any(line.endswith("more subtrees") for line in lines)
    assert lines[-1].startswith("q quit")
    # the busiest op and subtree made it onto the screen
    assert lines[lines.index(OPS_TITLE) + 1].startswith("op39_with_a_l")
    assert lines[lines.index(SUBTREES_TITLE) + 1].startswith("subtree-29 ")


@settings(max_examples=150, deadline=None)
@given(width=st.integers(0, 200), height=st.integers(0, 60), first=st.booleans())
def test_render_frame_fits_any_terminal_size(width: int, height: int, first: bool) -> None:
    prev, cur = _busy_samples(12, 6)
    lines = render_frame(None if first else prev, cur, width, height, view="/v\u00e9w",
                         status="cannot read: Transport endpoint is not connected")
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines)
    assert all(all(" " <= c <= "~" for c in line) for line in lines)
    if height >= 3 and width >= 20:
        assert lines[0].startswith("fusemount top"[:width])
        assert lines[-1].startswith("cannot read")


def test_render_frame_on_a_small_terminal_still_shows_ops() -> None:
    prev, cur = _busy_samples(12, 6)
    lines = render_frame(prev, cur, 40, 8)
    assert len(lines) == 8
    assert OPS_TITLE[:40] in lines
    assert lines[lines.index(OPS_TITLE[:40]) + 1].startswith("op11")


# --- main without a live view ---------------------------------------------------------------


def test_main_on_a_directory_that_is_not_a_view_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(str(tmp_path)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "not a fusemount view" in err


# --- against a live view --------------------------------------------------------------------


@pytest.fixture(scope="session")
def user_pythonpath(test_root: Path) -> str:
    """A copy of the package users can import: the checkout may sit in a directory only root
    can enter (`git clone . $(mktemp -d)` makes it 0700)."""
    target = test_root / "pythonpath"
    shutil.copytree(REPO / "fusemount", target / "fusemount",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(target)


@pytest.mark.needs_root
@pytest.mark.timeout(60)
def test_top_as_non_admin_prints_one_line_and_exits_1(
        view: ViewHandle, users: Users, user_pythonpath: str) -> None:
    result = run_as(users.alice, [SYSTEM_PYTHON, "-c", TOP_CODE, str(view.path)],
                    env={"PYTHONPATH": user_pythonpath, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "permission denied" in result.stderr and "admins" in result.stderr


@pytest.mark.needs_root
@pytest.mark.timeout(60)
def test_top_without_a_terminal_prints_one_frame_for_an_admin(
        view_factory: ViewFactory, users: Users, source: Path, user_pythonpath: str) -> None:
    view = view_factory(config_text='[access]\nadmins = ["root", "@fmt_admins"]\n')
    view.ok(f"attach data {source}")
    result = run_as(users.dave, [SYSTEM_PYTHON, "-c", TOP_CODE, str(view.path)],
                    env={"PYTHONPATH": user_pythonpath, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"fusemount top  {view.path}")
    assert "subtrees 1 attached, 0 failed" in result.stdout
    assert OPS_TITLE in lines
    # top's own two reads of the metrics file are requests the daemon answered
    assert float(_row(lines, "open")[TOTAL]) >= 1


@pytest.fixture(scope="module")
def tmux() -> str:
    path = shutil.which("tmux")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get") is not None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "tmux"], capture_output=True,
                       env=env, timeout=300, check=False)
        path = shutil.which("tmux")
    if path is None:
        pytest.skip("tmux is not installed and `apt-get install -y tmux` did not provide it")
    return path


class Pane:
    """One tmux session on a private server socket, so no user's tmux is ever touched."""

    def __init__(self, tmux: str, workdir: Path) -> None:
        self.tmux = tmux
        self.socket = f"fusemount-top-{uuid.uuid4().hex[:12]}"
        self.name = "top"
        self.err_file = workdir / "top.stderr"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.tmux, "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=10, check=False)

    def start(self, view: Path) -> None:
        top = (f"{shlex.quote(sys.executable)} -c {shlex.quote(TOP_CODE)} "
               f"{shlex.quote(str(view))} 2>{shlex.quote(str(self.err_file))}")
        # After top exits the shell reports its status and whether it left the tty sane
        # (canonical mode and echo back on), then stays so the screen can be read.
        script = (f"{top}; rc=$?; if stty -a | grep -qw -e -icanon -e -echo; then t=raw;"
                  f" else t=sane; fi; echo \"top-exited rc=$rc tty=$t\"; sleep 60")
        result = self._run("new-session", "-d", "-s", self.name, "-x", "80", "-y", "24",
                           "-c", str(REPO), "-e", f"PYTHONPATH={REPO}", script)
        assert result.returncode == 0, result.stderr

    def screen(self) -> list[str]:
        result = self._run("capture-pane", "-p", "-t", self.name)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    def keys(self, *keys: str) -> None:
        assert self._run("send-keys", "-t", self.name, *keys).returncode == 0

    def resize(self, width: int, height: int) -> None:
        result = self._run("resize-window", "-t", self.name, "-x", str(width),
                           "-y", str(height))
        assert result.returncode == 0, result.stderr

    def wait_for(self, what: str, predicate: Callable[[list[str]], bool],
                 timeout_s: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not on screen within {timeout_s}s:\n"
                                     + "\n".join(screen) + f"\n--- stderr ---\n{self.stderr()}")
            time.sleep(0.2)

    def stderr(self) -> str:
        try:
            return self.err_file.read_text()
        except OSError:
            return ""

    def kill(self) -> None:
        self._run("kill-server")


@pytest.fixture
def pane(tmux: str, test_root: Path) -> Iterator[Pane]:
    workdir = Path(os.path.realpath(test_root))
    pane = Pane(tmux, workdir / f"pane-{uuid.uuid4().hex[:8]}")
    pane.err_file.parent.mkdir()
    try:
        yield pane
    finally:
        pane.kill()


def _has_rates(screen: list[str]) -> bool:
    return any("rates over" in line for line in screen)


def _first_line_starts(text: str) -> Callable[[list[str]], bool]:
    return lambda screen: bool(screen) and screen[0].startswith(text)


def _exited(screen: list[str]) -> bool:
    return any(line.startswith("top-exited") for line in screen)


class Traffic:
    """stat, read and miss files under a subtree in a thread, until stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            os.stat(self.root / f"f{i % 5}")
            (self.root / f"f{i % 5}").read_bytes()
            # a new name each time: the kernel cannot answer it from its entry cache
            os.path.exists(self.root / f"missing-{i}")
            i += 1
            time.sleep(0.002)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@pytest.mark.timeout(90)
def test_top_in_tmux_shows_live_rates_and_quits_on_q(
        view: ViewHandle, source: Path, pane: Pane) -> None:
    for i in range(5):
        (source / f"f{i}").write_text(f"file {i}\n")
    view.ok(f"attach data {source}")
    pane.start(view.path)
    quiet = pane.wait_for("a frame with rates", _has_rates)
    assert len(quiet) <= 24 and all(len(line) <= 80 for line in quiet)
    assert quiet[0].startswith(f"fusemount top  {view.path}")
    assert "subtrees 1 attached, 0 failed" in quiet[1]
    # SUBTREE REQ/S TOTAL OPEN: nobody has touched the subtree yet
    assert _cell(quiet, "data", 1) == 0.0
    data_total = _cell(quiet, "data", 2)

    with Traffic(view.path / "data"):
        time.sleep(2.5)
        busy = pane.wait_for(
            "lookup and subtree rates above 0",
            lambda s: _cell(s, "lookup", RATE) > 0 and _cell(s, "data", 1) > 0)
    assert _cell(busy, "data", 2) > data_total
    assert _cell(busy, "lookup", TOTAL) > _cell(quiet, "lookup", TOTAL)

    pane.keys("q")
    done = pane.wait_for("top exiting on q", _exited, timeout_s=10)
    assert "top-exited rc=0 tty=sane" in done
    assert not any(line.startswith("fusemount top") for line in done)  # curses screen gone
    assert pane.stderr() == ""


@pytest.mark.timeout(90)
def test_top_in_tmux_survives_resizes_and_exits_on_ctrl_c(
        view: ViewHandle, source: Path, pane: Pane) -> None:
    view.ok(f"attach data {source}")
    pane.start(view.path)
    pane.wait_for("a frame with rates", _has_rates)
    # LINES/COLUMNS in the environment (pytest exports them) must not pin the size.
    for width, height in ((20, 4), (1, 1), (45, 10), (200, 60), (80, 24)):
        pane.resize(width, height)
        title = "fusemount top"[:width] if height > 1 else "q"  # 1 row: the footer only
        pane.wait_for(f"a redrawn {width}x{height} frame", _first_line_starts(title))
    small = pane.wait_for("the ops table on 80x24", lambda s: OPS_TITLE in s)
    assert len(small) <= 24
    pane.keys("C-c")
    done = pane.wait_for("top exiting on Ctrl-C", _exited, timeout_s=10)
    assert "top-exited rc=0 tty=sane" in done
    assert pane.stderr() == ""
