"""The shortest end-to-end path: serve, attach, read through the view, detach."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.daemon import ViewHandle


@pytest.mark.timeout(60)
def test_attach_read_detach_roundtrip(view: ViewHandle, source: Path) -> None:
    (source / "hello.txt").write_text("hello\n")
    reply = view.ok(f"attach data {source}")
    assert reply["ino"] == os.stat(source).st_ino
    assert (view.path / "data" / "hello.txt").read_text() == "hello\n"
    assert sorted(os.listdir(view.path)) == [".fusemount", "data"]
    (view.path / "data" / "new.txt").write_text("x")
    assert (source / "new.txt").read_text() == "x"
    view.ok("detach data")
    assert not (view.path / "data").exists()
    assert view.err("detach data") == errno.ENOENT
