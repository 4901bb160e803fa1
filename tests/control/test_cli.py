"""The command-line wrappers (SPEC 9): `fusemount VERB VIEW ...` and `fusemount ls VIEW
[--json]` go through the control files, print the reply's message on failure and exit
non-zero with it.

The key paths run the real `python -m fusemount` command; the rest call cli.main() in this
process, which is the same code without an interpreter start per call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusemount.cli import commands as cli
from tests.support.control import fusemount, names_listed, record_of, replace_dir
from tests.support.daemon import ViewHandle, is_mounted
from tests.support.dirs import SourceFactory
from tests.support.users import SYSTEM_PYTHON, Users, run_as


@pytest.mark.timeout(60)
def test_attach_and_ls_wrappers(view: ViewHandle, source: Path) -> None:
    attached = fusemount("attach", str(view.path), "data", str(source))
    assert attached.returncode == 0, attached.stderr
    assert names_listed(view.path) == {"data"}
    listed = fusemount("ls", str(view.path))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert any(row[:1] == ["data"] and str(source) in row for row in rows), listed.stdout
    as_json = fusemount("ls", str(view.path), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == view.mounts_json()


@pytest.mark.timeout(60)
def test_failing_wrapper_prints_message_and_exits_non_zero(view: ViewHandle) -> None:
    expected = view.ctl("detach nosuch").data["message"]
    assert isinstance(expected, str) and expected
    result = fusemount("detach", str(view.path), "nosuch")
    assert result.returncode != 0
    assert expected in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(60)
def test_wrappers_for_every_verb(
    view: ViewHandle, new_source: SourceFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    view_path = str(view.path)
    src = new_source()
    assert cli.main(["attach", view_path, "data", str(src), "holder=H1"]) == 0
    assert cli.main(["hold", view_path, "data", "H2"]) == 0
    assert record_of(view.mounts_json(), "data")["holders"] == ["H1", "H2"]
    assert cli.main(["release", view_path, "data", "H1"]) == 0
    assert cli.main(["set", view_path, "data", "ro"]) == 0
    assert record_of(view.mounts_json(), "data")["ro"] is True
    assert cli.main(["mount", view_path, "scratch", "tmpfs", "none", "options=size=1m"]) == 0
    assert names_listed(view.path) == {"data", "scratch"}
    assert cli.main(["detach", view_path, "scratch"]) == 0
    assert cli.main(["release", view_path, "data", "H2"]) == 0
    assert names_listed(view.path) == set()
    assert capsys.readouterr().err == ""


@pytest.mark.timeout(60)
def test_wrapper_passes_words_with_spaces_intact(
    view: ViewHandle, test_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = test_root / "a source with spaces"
    source.mkdir()
    source.chmod(0o755)
    assert cli.main(["attach", str(view.path), "data", str(source)]) == 0
    assert record_of(view.mounts_json(), "data")["source"] == str(source)
    # A name with a space stays one (bad) word: the daemon refuses it, nothing splits it.
    assert cli.main(["attach", str(view.path), "two words", str(source)]) != 0
    err = capsys.readouterr().err
    assert "two words" in err
    assert names_listed(view.path) == {"data"}


@pytest.mark.timeout(60)
def test_each_refusal_is_reported(view: ViewHandle, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["attach", "data", "/nonexistent-fusemount-source"], "ENOENT"),
        (["attach", "data", "/relative-made-absolute-but-missing"], "ENOENT"),
        (["release", "nosuch", "H1"], "ENOENT"),
        (["set", "nosuch", "ro"], "ENOENT"),
    ]
    for (verb, *words), errno_name in cases:
        assert cli.main([verb, str(view.path), *words]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert errno_name in err, err
    assert view.mounts_json() == []


@pytest.mark.timeout(60)
def test_ls_on_a_path_that_is_not_a_view_fails(
    scratch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ls", str(scratch)]) != 0
    assert capsys.readouterr().err.strip()


# --- issue 15 item 6: a CLI that explains itself -----------------------------------------


@pytest.mark.timeout(60)
def test_help_lists_every_command_and_help_cmd_works() -> None:
    listed = fusemount("--help")
    assert listed.returncode == 0, listed.stderr
    for command in cli.COMMANDS:
        assert f"\n    {command} " in listed.stdout, command
    assert "exit status:" in listed.stdout
    assert fusemount("help").stdout == listed.stdout
    one = fusemount("help", "attach")
    assert one.returncode == 0
    assert one.stdout.startswith("usage: fusemount attach")


@pytest.mark.timeout(60)
def test_typo_is_an_unknown_command_with_a_suggestion(scratch: Path) -> None:
    result = fusemount("atach", str(scratch))
    assert result.returncode == 2
    assert "unknown command 'atach'" in result.stderr
    assert "attach" in result.stderr.split("did you mean", 1)[1]
    assert "No such file" not in result.stderr  # not read as the mount helper form


@pytest.mark.timeout(60)
def test_global_options_before_or_after_the_command(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    for argv in (["--json", "ls", str(view.path)], ["ls", "--json", str(view.path)],
                 ["ls", str(view.path), "--json"], ["-v", "--json", "ls", str(view.path)]):
        result = fusemount(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert json.loads(result.stdout) == view.mounts_json(), argv
    for argv in (["-v", "hold", str(view.path), "data", "H"],
                 ["hold", "-v", str(view.path), "data", "H2"]):
        result = fusemount(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert json.loads(result.stdout)["ok"] is True


@pytest.mark.timeout(60)
def test_json_failure_is_one_json_object_on_stdout(view: ViewHandle, scratch: Path) -> None:
    cases = [
        (["--json", "detach", str(view.path), "nosuch"], 1, "ENOENT"),
        (["--json", "ls", str(scratch)], 1, "ENOENT"),
        (["--json", "atach", str(view.path)], 2, "EINVAL"),
        (["--json", "ls"], 2, "EINVAL"),
        (["--json", "stop", str(scratch)], 1, "ENOENT"),
    ]
    for argv, code, errno_name in cases:
        result = fusemount(*argv)
        assert result.returncode == code, (argv, result)
        obj = json.loads(result.stdout)
        assert obj["ok"] is False and obj["errno"] == errno_name, (argv, obj)
        assert isinstance(obj["message"], str) and obj["message"], argv
        assert result.stderr == "", (argv, result.stderr)


@pytest.mark.timeout(60)
def test_not_a_fusemount_view_everywhere(scratch: Path) -> None:
    for argv in (["ls", str(scratch)], ["status", str(scratch)], ["stop", str(scratch)],
                 ["top", str(scratch)], ["attach", str(scratch), "d", "/srv"],
                 ["detach", str(scratch / "missing"), "d"]):
        result = fusemount(*argv)
        assert result.returncode == 1, (argv, result)
        assert "not a fusemount view" in result.stderr, (argv, result.stderr)


@pytest.mark.timeout(60)
@pytest.mark.daemon_log_ok  # the replaced source is logged as not re-attached
def test_status_and_ls_show_the_daemon_and_why_a_subtree_failed(
    view: ViewHandle, new_source: SourceFactory
) -> None:
    good, gone = new_source(), new_source()
    view.ok(f"attach good {good}")
    view.ok(f"attach gone {gone}")
    replace_dir(gone)
    view.restart()
    reason = record_of(view.mounts_json(), "gone")["reason"]
    assert isinstance(reason, str) and reason

    listed = fusemount("ls", str(view.path))
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("gone "))
    assert "failed" in row and row.endswith(reason)

    shown = fusemount("status", str(view.path))
    assert shown.returncode == 0, shown.stderr
    assert f"pid {view.daemon.pid}," in shown.stdout
    assert f"config:   {view.daemon.config_path}" in shown.stdout
    assert f"state:    {view.state}" in shown.stdout
    assert "subtrees: 2 (1 attached, 1 failed, 0 stalled)" in shown.stdout
    assert f"gone: failed, health failed, attach {gone}: {reason}" in shown.stdout

    as_json = fusemount("status", "--json", str(view.path))
    doc = json.loads(as_json.stdout)
    assert doc["daemon"]["pid"] == view.daemon.pid
    assert doc["daemon"]["state"] == str(view.state)
    assert 0 <= doc["daemon"]["uptime"] < 120
    assert {s["name"]: s["health"] for s in doc["subtrees"]} == {"good": "ok", "gone": "failed"}


@pytest.mark.timeout(60)
def test_status_as_a_non_admin_lists_what_they_may_see(
    view: ViewHandle, source: Path, users: Users, test_root: Path
) -> None:
    view.ok(f"attach shared {source} allow={users.alice.name}:ro")
    # A copy users can import (the checkout may sit in a root-only directory); the system
    # Python has no pyfuse3, which status must not need.
    pythonpath = test_root / f"pythonpath-{source.name}"
    shutil.copytree(Path(cli.__file__).parents[1], pythonpath / "fusemount",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [pythonpath, *pythonpath.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    result = run_as(users.alice, [SYSTEM_PYTHON, "-m", "fusemount", "status", str(view.path)],
                    env={"PYTHONPATH": str(pythonpath), "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stderr
    assert "details for admins only" in result.stdout
    assert "shared: attached, health ok" in result.stdout


@pytest.mark.timeout(60)
def test_mounts_file_names_users_and_groups(view: ViewHandle, source: Path, users: Users) -> None:
    view.ok(f"attach data {source} owner={users.alice.uid} "
            f"allow=@{users.team.gid}:ro,{users.carol.uid}:rw")
    (line,) = view.mounts()
    assert f"owner={users.alice.name}" in line
    assert f"allow=@{users.team.name}:ro;{users.carol.name}:rw" in line
    # mounts.json keeps numbers for scripts
    assert record_of(view.mounts_json(), "data")["owner"] == users.alice.uid


@pytest.mark.timeout(60)
def test_eloop_names_the_symlink(view: ViewHandle, source: Path, test_root: Path) -> None:
    (source / "real").mkdir()
    link = test_root / f"link-{source.name}"
    link.symlink_to(source)
    result = fusemount("attach", str(view.path), "data", f"{link}/real")
    assert result.returncode == 1
    assert f"symlink met at {link} -> {source}" in result.stderr, result.stderr
    assert "(ELOOP)" in result.stderr


@pytest.mark.timeout(60)
def test_relative_source_is_resolved_by_the_cli(view: ViewHandle, source: Path) -> None:
    (source / "sub").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "fusemount", "attach", str(view.path), "data", "sub"],
        cwd=source, capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=str(Path(cli.__file__).parents[2])),
    )
    assert result.returncode == 0, result.stderr
    assert record_of(view.mounts_json(), "data")["source"] == str(source / "sub")


@pytest.mark.timeout(60)
def test_set_squash_through_cli_and_client(view: ViewHandle, source: Path) -> None:
    from fusemount.client import Client

    view.ok(f"attach data {source}")
    assert "squash=root|none" in fusemount("help", "set").stdout
    assert cli.main(["set", str(view.path), "data", "squash=root"]) == 0
    assert record_of(view.mounts_json(), "data")["squash"] == "root"
    Client(view.path).set("data", squash="none")
    assert record_of(view.mounts_json(), "data")["squash"] == "none"


# --- issue 15 item 5: stop refuses a busy view, like umount ---------------------------------


@pytest.mark.timeout(60)
def test_stop_refuses_while_files_are_open_unless_force(view: ViewHandle, source: Path) -> None:
    (source / "f").write_text("x")
    view.ok(f"attach data {source}")
    with open(view.path / "data" / "f") as held:
        refused = fusemount("stop", str(view.path))
        assert refused.returncode == 1
        assert "target is busy" in refused.stderr and "(EBUSY)" in refused.stderr
        assert str(os.getpid()) in refused.stderr
        assert view.daemon.running and is_mounted(view.path)
        assert held.read() == "x"
    # a working directory under the view counts too, as for umount
    holder = subprocess.Popen(["sleep", "30"], cwd=view.path / "data")
    try:
        assert fusemount("stop", str(view.path)).returncode == 1
        forced = fusemount("stop", "--force", str(view.path))
        assert forced.returncode == 0, forced.stderr
    finally:
        holder.kill()
        holder.wait()
    assert view.daemon.stop() == 0  # waits for the exit; 0: the daemon shut down cleanly
    assert not is_mounted(view.path)


@pytest.mark.timeout(60)
def test_a_dead_view_is_reported_as_not_connected(view: ViewHandle) -> None:
    view.daemon.kill()
    result = fusemount("ls", str(view.path))
    assert result.returncode == 1
    assert "not connected" in result.stderr and "(ENOTCONN)" in result.stderr, result.stderr
    as_json = json.loads(fusemount("--json", "status", str(view.path)).stdout)
    assert as_json["errno"] == "ENOTCONN"
