"""The `metrics` control file (SPEC 4): Prometheus text for admins, EACCES for everyone else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.users import Users, py_as

# One sample line of the text exposition format: name{labels} value
_SAMPLE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eE]+|.* (NaN|[+-]Inf)")


@pytest.mark.timeout(60)
def test_root_reads_prometheus_metrics(view: ViewHandle, source: Path) -> None:
    view.ok(f"attach data {source}")
    (view.path / "data").stat()
    text = (view.path / ".fusemount" / "metrics").read_text()
    assert "fusemount_requests_total" in text
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        assert _SAMPLE.fullmatch(line), f"not a Prometheus sample: {line!r}"
    assert re.search(r"^# TYPE fusemount_requests_total counter$", text, re.M)


@pytest.mark.timeout(60)
def test_non_admin_gets_eacces_on_metrics(view: ViewHandle, users: Users) -> None:
    metrics = str(view.path / ".fusemount" / "metrics")
    result = py_as(users.alice, f"print(json.dumps(errno_of(lambda: open({metrics!r}).read())))")
    assert result == "EACCES"
    # The other control files stay readable to her.
    version = str(view.path / ".fusemount" / "version")
    result = py_as(users.alice, f"print(json.dumps(open({version!r}).read()))")
    assert isinstance(result, str) and result.startswith("fusemount ")


@pytest.mark.timeout(60)
def test_group_admin_reads_metrics(view_factory: ViewFactory, users: Users) -> None:
    view = view_factory(f'[access]\nadmins = ["root", "@{users.admins.name}"]\n')
    metrics = str(view.path / ".fusemount" / "metrics")
    text = py_as(users.dave, f"print(json.dumps(open({metrics!r}).read()))")
    assert isinstance(text, str) and "fusemount_requests_total" in text
    denied = py_as(users.alice, f"print(json.dumps(errno_of(lambda: open({metrics!r}).read())))")
    assert denied == "EACCES"
