"""A handler that raises something unexpected answers EIO and the view keeps answering.

pyfuse3 ends its main loop when a handler raises anything but FUSEError; the daemon's one
boundary wrapper (view/errors.py) must turn such a bug into EIO for that one request.
The daemon runs with one backing function replaced by a bug, not with a hook in the code.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from tests.support.ctl import ctl_ok
from tests.support.daemon import Daemon

_BUGGY_DAEMON = """
import sys
import fusemount.host.backing as backing

def readlink(fd):
    raise RuntimeError("injected bug")

backing.readlink = readlink
from fusemount.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.daemon_log_ok
@pytest.mark.timeout(60)
def test_handler_raising_runtime_error_gives_eio_and_view_keeps_answering(
    test_root: Path, source: Path
) -> None:
    workdir = test_root / "buggy"
    workdir.mkdir()
    view = workdir / "mnt"
    view.mkdir()
    (source / "link").symlink_to("target")
    (source / "file").write_text("still here")
    daemon = Daemon(workdir, command=(sys.executable, "-c", _BUGGY_DAEMON))
    try:
        daemon.start(view)
        ctl_ok(view, f"attach data {source}")
        with pytest.raises(OSError) as info:
            os.readlink(view / "data" / "link")
        assert info.value.errno == errno.EIO
        # The same daemon still serves every other request.
        assert (view / "data" / "file").read_text() == "still here"
        with pytest.raises(OSError) as again:
            os.readlink(view / "data" / "link")
        assert again.value.errno == errno.EIO
        assert daemon.running
        assert "injected bug" in daemon.stderr_text()
    finally:
        daemon.cleanup()
