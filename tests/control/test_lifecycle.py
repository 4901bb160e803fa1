"""Running and stopping (SPEC 2) and the configuration file (SPEC 7): clean stops exit 0 and
unmount, `--background` returns only once the view is live, bad input stops `serve` with a
one-line reason that names what is wrong.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tomllib
from pathlib import Path

import pytest

from fusemount.cli import commands as cli
from tests.support.control import (
    fusemount,
    make_dir,
    names_listed,
    reap_unmanaged,
    serving_pids,
    start_fails,
    wait_gone,
)
from tests.support.ctl import ctl_ok
from tests.support.daemon import (
    VIEW_FSTYPE,
    DaemonStartError,
    ViewFactory,
    ViewHandle,
    is_mounted,
    mountinfo,
)

STOP_DEADLINE_S = 15.0


# --- clean stop ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigterm_stops_cleanly_with_exit_0(view: ViewHandle, source: Path) -> None:
    (source / "f").write_text("x")
    view.ok(f"attach data {source}")
    assert (view.path / "data" / "f").read_text() == "x"
    assert view.daemon.stop(STOP_DEADLINE_S) == 0
    assert not is_mounted(view.path)
    assert os.listdir(view.path) == []


@pytest.mark.timeout(60)
def test_sigterm_with_open_file_still_exits_0(view: ViewHandle, source: Path) -> None:
    (source / "f").write_text("x")
    view.ok(f"attach data {source}")
    fd = os.open(view.path / "data" / "f", os.O_RDONLY)
    try:
        assert view.daemon.stop(STOP_DEADLINE_S) == 0
        assert not is_mounted(view.path)
    finally:
        # The view is gone; closing an orphaned FUSE file may report that.
        with contextlib.suppress(OSError):
            os.close(fd)
    assert (source / "f").read_text() == "x"


@pytest.mark.timeout(60)
def test_sigint_stops_cleanly_with_exit_0(view: ViewHandle) -> None:
    pid = view.pid
    os.kill(pid, signal.SIGINT)
    assert wait_gone(pid, STOP_DEADLINE_S), "daemon ignored SIGINT"
    assert view.daemon.stop() == 0
    assert not is_mounted(view.path)


@pytest.mark.timeout(60)
def test_fusemount_stop_exits_0_and_unmounts(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    pid = view.pid
    result = fusemount("stop", str(view.path))
    assert result.returncode == 0, result.stderr
    assert wait_gone(pid, STOP_DEADLINE_S)
    assert view.daemon.stop() == 0
    assert not is_mounted(view.path)


@pytest.mark.timeout(60)
def test_fusemount_stop_without_daemon_fails(scratch: Path) -> None:
    view = make_dir(scratch, "mnt")
    result = fusemount("stop", str(view))
    assert result.returncode != 0
    assert result.stderr.strip()


# --- --background ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_background_returns_when_live(scratch: Path, source: Path) -> None:
    view = make_dir(scratch, "mnt")
    (source / "f").write_text("x")
    try:
        result = fusemount(
            "serve", str(view), "--background", "--state", str(scratch / "state.json")
        )
        assert result.returncode == 0, result.stderr
        # Usable at once, with no waiting on our side.
        reply = ctl_ok(view, f"attach data {source}")
        assert reply["ok"] is True
        assert (view / "data" / "f").read_text() == "x"
        assert is_mounted(view, VIEW_FSTYPE)
        pids = serving_pids(view)
        assert len(pids) == 1
        stopped = fusemount("stop", str(view))
        assert stopped.returncode == 0, stopped.stderr
        assert wait_gone(pids[0], STOP_DEADLINE_S)
        assert not is_mounted(view)
    finally:
        leftovers = reap_unmanaged(view)
    assert leftovers == []


@pytest.mark.timeout(60)
def _background_fails_with_one_line(scratch: Path, view: Path, why: str, *args: str) -> None:
    """`serve VIEW --background ARGS...` exits non-zero with one line naming why, leaving
    nothing served."""
    try:
        result = fusemount(
            "serve", str(view), "--background", *args, "--state", str(scratch / "state.json")
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert why in lines[0]
        assert not is_mounted(view)
    finally:
        leftovers = reap_unmanaged(view)
    assert leftovers == []


@pytest.mark.timeout(60)
def test_background_with_non_empty_view_fails_with_one_line(scratch: Path) -> None:
    view = make_dir(scratch, "mnt")
    (view / "file").write_text("x")
    _background_fails_with_one_line(scratch, view, "empty")


@pytest.mark.timeout(60)
def test_background_with_bad_config_fails_with_one_line(scratch: Path) -> None:
    config = scratch / "bad.toml"
    config.write_text("[limits]\nmax_subtrees = -1\n")
    _background_fails_with_one_line(scratch, make_dir(scratch, "mnt"), "max_subtrees",
                                    "--config", str(config))


@pytest.mark.timeout(60)
def test_serve_refuses_non_empty_view(scratch: Path) -> None:
    view = make_dir(scratch, "mnt")
    (view / "file").write_text("x")
    start_fails(scratch, view, scratch / "state.json", "empty")


@pytest.mark.timeout(60)
def test_serve_refuses_a_view_that_is_already_served(view: ViewHandle, scratch: Path) -> None:
    try:
        result = fusemount(
            "serve", str(view.path), "--state", str(scratch / "state.json"), timeout_s=20
        )
    finally:
        others = [pid for pid in serving_pids(view.path) if pid != view.daemon.pid]
        for pid in others:
            os.kill(pid, signal.SIGKILL)
    assert others == []
    assert result.returncode != 0
    assert result.stderr.strip()
    assert [e.fstype for e in mountinfo() if e.mount_point == view.path] == [VIEW_FSTYPE]
    assert (view.path / ".fusemount" / "version").read_text().startswith("fusemount")


@pytest.mark.timeout(60)
def test_serve_refuses_missing_view(scratch: Path) -> None:
    start_fails(scratch, scratch / "missing", scratch / "state.json", "missing")


# --- configuration ---------------------------------------------------------------------------

# (config text, the key the error must name)
BAD_CONFIGS: list[tuple[str, str]] = [
    ("[limits]\nmax_subtrees = 0\n", "max_subtrees"),
    ("[limits]\nmax_subtrees = -5\n", "max_subtrees"),
    ('[limits]\nmax_subtrees = "64"\n', "max_subtrees"),
    ("[limits]\nmax_subtrees = true\n", "max_subtrees"),
    ("[limits]\nmax_holders = 1.5\n", "max_holders"),
    ("[limits]\nmax_open_files = 0\n", "max_open_files"),
    ("[limits]\nmax_subtrees_per_user = 0\n", "max_subtrees_per_user"),
    ("[limits]\nmax_command_bytes = 1\n", "max_command_bytes"),
    ("[limits]\nmax_command_bytes = 99999999999\n", "max_command_bytes"),
    ("[limits]\nmax_subtree = 5\n", "max_subtree"),
    ('[access]\nself_service = "yes"\n', "self_service"),
    ('[access]\nadmins = "root"\n', "admins"),
    ("[access]\nadmins = [1.5]\n", "admins"),
    ('[access]\nsource_roots = ["relative/path"]\n', "source_roots"),
    ("[access]\nfstypes = [3]\n", "fstypes"),
    ("[access]\nrequire_mountpoint = 1\n", "require_mountpoint"),
    ("[access]\nadmin = []\n", "admin"),
    ("[cache]\nentry_timeout = -1.0\n", "entry_timeout"),
    ('[cache]\nattr_timeout = "1s"\n', "attr_timeout"),
    ('[log]\naudit = "relative.log"\n', "audit"),
    ("[log]\naudit = 5\n", "audit"),
    ("[bogus]\nkey = 1\n", "bogus"),
    ("toplevel = 1\n", "toplevel"),
    ("limits = 5\n", "limits"),
    ("[limits\n", "TOML"),
    # issue 15: [log] keys and [[subtree]] tables
    ('[log]\nlevel = "chatty"\n', "log.level"),
    ('[log]\ntarget = "journal"\n', "log.target"),
    ('[[subtree]]\nname = "d"\nsource = "/srv"\nsize = 1\n', "subtree[0].size"),
    ('[[subtree]]\nname = "d"\nsource = "/srv"\nallow = ["nobody:rx"]\n', "subtree[0] (d)"),
]


@pytest.mark.timeout(60)
def test_config_check_rejects_each_bad_config_naming_the_key(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In process: the same cli.main() that `fusemount config --check` runs, without paying
    # an interpreter start per row; the command line itself is run once below.
    wrong: list[str] = []
    for index, (text, key) in enumerate(BAD_CONFIGS):
        path = scratch / f"bad{index}.toml"
        path.write_text(text)
        code = cli.main(["config", "--check", str(path)])
        message = capsys.readouterr().err.strip()
        if code == 0 or key not in message or len(message.splitlines()) != 1:
            wrong.append(f"{text!r}: exit {code}, stderr {message!r}")
    assert wrong == [], "\n".join(wrong)
    result = fusemount("config", "--check", str(scratch / "bad0.toml"))
    assert result.returncode != 0
    assert "max_subtrees" in result.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("text", "key"),
    [
        BAD_CONFIGS[0],
        BAD_CONFIGS[2],
        BAD_CONFIGS[9],
        BAD_CONFIGS[21],
        BAD_CONFIGS[-1],
    ],
    ids=["out-of-range", "wrong-type", "unknown-key", "unknown-section", "bad-subtree-table"],
)
def test_serve_with_bad_config_exits_non_zero_naming_the_key(
    view_factory: ViewFactory, text: str, key: str
) -> None:
    with pytest.raises(DaemonStartError) as failed:
        view_factory(text)
    assert failed.value.returncode not in (None, 0), "daemon did not exit"
    assert key in failed.value.log


@pytest.mark.timeout(60)
def test_config_check_accepts_good_config(scratch: Path) -> None:
    path = scratch / "good.toml"
    path.write_text(
        '[access]\nadmins = ["root", "@wheel", "1234"]\nself_service = true\n'
        f'self_service_roots = ["{scratch}"]\nfstypes = ["ext4", "xfs"]\n'
        "[limits]\nmax_subtrees = 10\nmax_open_files = 100\n"
        "[cache]\nentry_timeout = 0\nattr_timeout = 2.5\n"
        f'[log]\naudit = "{scratch}/audit.log"\n'
    )
    result = fusemount("config", "--check", str(path))
    assert result.returncode == 0, result.stderr
    empty = scratch / "empty.toml"
    empty.write_text("")
    assert fusemount("config", "--check", str(empty)).returncode == 0


@pytest.mark.timeout(60)
def test_config_check_of_missing_file_fails(scratch: Path) -> None:
    result = fusemount("config", "--check", str(scratch / "missing.toml"))
    assert result.returncode != 0
    assert "missing.toml" in result.stderr


@pytest.mark.timeout(60)
def test_config_defaults_are_the_spec_defaults_and_check_clean(scratch: Path) -> None:
    result = fusemount("config", "--defaults")
    assert result.returncode == 0, result.stderr
    doc = tomllib.loads(result.stdout)
    assert doc["limits"]["max_subtrees"] == 64
    assert doc["limits"]["max_subtrees_per_user"] == 8
    assert doc["limits"]["max_holders"] == 1024
    assert doc["limits"]["max_open_files"] == 4096
    assert doc["limits"]["max_command_bytes"] == 4096
    assert doc["access"]["self_service"] is False
    assert doc["access"]["admins"] == ["root", "@fusemount"]
    assert doc["access"]["mount_fstypes"] == ["tmpfs", "ext4", "xfs", "btrfs", "squashfs", "erofs"]
    assert doc["cache"] == {"entry_timeout": 1.0, "attr_timeout": 1.0}
    # SPEC 7 [log] gained level, target, file and syslog_socket (issue 15 item 1).
    assert doc["log"] == {"audit": "", "level": "info", "target": "auto", "file": "",
                          "syslog_socket": "/dev/log"}
    path = scratch / "defaults.toml"
    path.write_text(result.stdout)
    assert fusemount("config", "--check", str(path)).returncode == 0


@pytest.mark.timeout(60)
def test_serve_runs_on_defaults_output(view_factory: ViewFactory, source: Path) -> None:
    defaults = fusemount("config", "--defaults").stdout
    view = view_factory(defaults)
    view.ok(f"attach data {source}")
    assert names_listed(view.path) == {"data"}
