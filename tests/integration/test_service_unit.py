"""The shipped systemd unit, scripts/fusemount@.service (issue 15 item 2, SPEC 2).

What can be tested without systemd as PID 1: the unit parses cleanly (`systemd-analyze
verify`, which reports unknown keys and bad values), it uses no option that gives the service
its own mount namespace (the view would be invisible to the host), and it runs the daemon the
way the README says (one instance per view, --config, reload by SIGHUP, readiness by
sd_notify). Starting it for real needs systemd running as PID 1, which this VM does not have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "scripts" / "fusemount@.service"

# Every [Service] option after which systemd sets up a mount namespace for the service
# (systemd's exec_needs_mount_namespace(), v252 to v256), plus PrivateUsers= and
# PrivateNetwork=, whose namespaces stop FUSE mounts from reaching the host too.
NAMESPACE_OPTIONS = frozenset({
    "RootDirectory", "RootImage", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
    "ExecPaths", "NoExecPaths", "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem",
    "MountImages", "ExtensionImages", "ExtensionDirectories", "MountFlags", "PrivateTmp",
    "PrivateDevices", "PrivateMounts", "PrivateNetwork", "NetworkNamespacePath",
    "PrivateIPC", "IPCNamespacePath", "PrivateUsers", "ProtectSystem", "ProtectHome",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectProc", "ProcSubset", "LogNamespace", "DynamicUser",
    "ReadOnlyDirectories", "ReadWriteDirectories", "InaccessibleDirectories",
})
_OFF = frozenset({"", "no", "false", "off", "0"})


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) lists, keys repeated as written (DeviceAllow=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def namespace_options(text: str) -> list[str]:
    """The options in text that would give the service its own mount namespace."""
    return [f"{key}={value}" for entries in parse_unit(text).values()
            for key, value in entries if key in NAMESPACE_OPTIONS and value.lower() not in _OFF]


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for k, v in parse_unit(UNIT.read_text())[section] if k == key]


def test_unit_creates_no_mount_namespace() -> None:
    assert namespace_options(UNIT.read_text()) == []


def test_the_check_rejects_what_the_old_unit_had() -> None:
    old = "[Service]\nProtectSystem=full\nProtectHome=read-only\nPrivateTmp=no\n" \
          "ProtectKernelModules=yes\nProtectControlGroups=yes\nNoNewPrivileges=yes\n"
    assert namespace_options(old) == ["ProtectSystem=full", "ProtectHome=read-only",
                                      "ProtectKernelModules=yes", "ProtectControlGroups=yes"]


def test_unit_runs_one_view_per_instance_with_its_config_and_reloads_by_sighup() -> None:
    (start,) = _values("ExecStart")
    words = start.split()
    assert words[1:3] == ["serve", "%f"]  # %f: the instance name unescaped as a path
    assert words[words.index("--config") + 1] == "/etc/fusemount/%i.toml"
    assert words[words.index("--state") + 1] == "/var/lib/fusemount/%i.json"
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    # Type=notify needs the daemon to send READY=1 (tests/integration/test_host_integration.py)
    assert _values("Type") == ["notify"]
    assert "RestrictSUIDSGID" not in dict(parse_unit(UNIT.read_text())["Service"])


def test_unit_allows_the_devices_the_daemon_opens() -> None:
    allowed = {v.split()[0]: v.split()[1] for v in _values("DeviceAllow")}
    assert "rw" in allowed["/dev/fuse"]
    assert "rw" in allowed["/dev/loop-control"]
    assert set("rw") <= set(allowed["block-*"])  # images' loop devices and real disks


def test_unit_documentation_is_real() -> None:
    (docs,) = _values("Documentation", "Unit")
    assert "example.invalid" not in docs
    assert "man:fusemount(8)" in docs.split()


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify checks that ExecStart= is executable: point it at a stand-in
    stand_in = tmp_path / "fusemount"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    (tmp_path / UNIT.name).write_text(
        UNIT.read_text().replace("/usr/local/bin/fusemount", str(stand_in)))
    view = tmp_path / "srv view"
    view.mkdir()
    instance = subprocess.run(["systemd-escape", "--path", str(view)], capture_output=True,
                              text=True, check=True).stdout.strip()
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / f"fusemount@{instance}.service")],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # unknown keys and bad values are warnings
