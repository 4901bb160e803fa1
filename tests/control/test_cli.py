"""The command-line wrappers (SPEC 9): `fusemount VERB VIEW ...` and `fusemount ls VIEW
[--json]` go through the control files, print the reply's message on failure and exit
non-zero with it.

The key paths run the real `python -m fusemount` command; the rest call cli.main() in this
process, which is the same code without an interpreter start per call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusemount import cli
from tests.control.conftest import SourceFactory
from tests.control.helpers import fusemount, names_listed, record_of
from tests.support.daemon import ViewHandle


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
        (["attach", "data", "relative"], "EINVAL"),
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
