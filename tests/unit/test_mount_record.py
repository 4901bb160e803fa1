"""core.mounts.MountRecord: the one type the view renders into mounts.json and the client
parses back (issue 16 item 5)."""

from __future__ import annotations

import json

import pytest

from fusemount.client import parse_mounts
from fusemount.core.mounts import MountRecord

ATTACHED = MountRecord(
    name="data", kind="attach", source="/srv/data", ro=True, owner=1001,
    allow=("1002:ro", "@1003:rw", "*:ro"), holders=("vm42",), squash="root", expire=30.0,
    dev=2049, ino=2, mount_id=77, fstype="ext4", open_files=3, access="none", health="stalled",
)
MOUNTED = MountRecord(name="scratch", kind="mount", source="none", fstype="tmpfs",
                      options="size=1m", owner=0, access="rw")
FAILED = MountRecord(name="gone", state="failed", reason="identity changed", health="failed")


@pytest.mark.parametrize("record", [ATTACHED, MOUNTED, FAILED])
def test_what_the_view_renders_the_client_reads_back_whole(record: MountRecord) -> None:
    data = json.dumps([record.to_json()]).encode()
    assert parse_mounts(data) == [record]


def test_options_only_for_a_mount() -> None:
    assert "options" not in ATTACHED.to_json()
    assert MOUNTED.to_json()["options"] == "size=1m"


@pytest.mark.parametrize(("key", "value"), [("expire", "30"), ("expire", True),
                                            ("squash", 1), ("options", 5)])
def test_a_key_of_the_wrong_type_is_refused(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        MountRecord.from_json({"name": "x", key: value})
