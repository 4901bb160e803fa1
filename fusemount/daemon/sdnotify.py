"""systemd's readiness protocol: datagrams to $NOTIFY_SOCKET (sd_notify(3)), no libsystemd.

Silently does nothing when the daemon was not started by systemd (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send one notification such as "READY=1"; True if it was delivered."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    # An abstract socket is written with a leading '@' in the environment.
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", message, exc)
        return False
