"""qemu-img and qemu-io on a sparse 1 GiB image in the view give what they give natively.

A real client of fallocate (qemu's discard is a punch hole, write-zeroes a zero range or a
punch), SEEK_DATA/SEEK_HOLE (`qemu-img map`, and the sparse reads of `convert`) and
copy_file_range: the same script runs in a plain directory and in a subtree on the same
filesystem, and every output (maps, check, info, compare) must be identical. The images
stay small on disk (a few MiB of data), so the test is quick on a 64 MiB filesystem.
Serves issue 14 item 4 (SPEC 3).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.pairs import Pair
from tests.support.ranges import describe

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                       reason="qemu-utils is not installed (make setup installs it)"),
]

# qemu-io commands that shape the raw image: data, a discard (punch hole) inside it, a
# zeroed range, and data far out, so the map has several data and hole runs.
SHAPE = ["write -P 0x5a 0 4M", "discard 1M 1M", "write -P 0xa5 512M 1M",
         "write -z 2M 512k", "write -P 0x11 1023M 64k"]


def _run(directory: Path, *argv: str) -> dict[str, object]:
    result = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=100,
                            check=False)
    # qemu-io reports its speed after each command: the one line that may differ.
    out = "".join(line for line in result.stdout.splitlines(keepends=True)
                  if " ops; " not in line)
    return {"argv": " ".join(argv), "rc": result.returncode,
            "out": out.replace(str(directory), "DIR"),
            "err": result.stderr.replace(str(directory), "DIR")}


def _info(directory: Path, name: str) -> dict[str, object]:
    run = _run(directory, "qemu-img", "info", "--output=json", name)
    assert run["rc"] == 0, run
    info = json.loads(str(run["out"]))
    assert isinstance(info, dict)
    return info


def qemu_session(directory: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    steps = [
        ("create", ["qemu-img", "create", "-f", "raw", "disk.raw", "1G"]),
        ("shape", ["qemu-io", "-f", "raw", *[w for c in SHAPE for w in ("-c", c)],
                   "disk.raw"]),
        ("map_raw", ["qemu-img", "map", "--output=json", "-f", "raw", "disk.raw"]),
        ("to_qcow2", ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "disk.raw",
                      "disk.qcow2"]),
        ("check", ["qemu-img", "check", "disk.qcow2"]),
        ("map_qcow2", ["qemu-img", "map", "--output=json", "disk.qcow2"]),
        ("to_raw", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "disk.qcow2",
                    "back.raw"]),
        ("map_back", ["qemu-img", "map", "--output=json", "-f", "raw", "back.raw"]),
        ("compare", ["qemu-img", "compare", "-f", "raw", "-F", "raw", "disk.raw",
                     "back.raw"]),
    ]
    for name, argv in steps:
        out[name] = _run(directory, *argv)
    for name in ("disk.raw", "disk.qcow2", "back.raw"):
        out[f"info_{name}"] = _info(directory, name)
    out["file_qcow2"] = describe(directory / "disk.qcow2")
    return out


def test_qemu_img_on_sparse_image_matches_native_issue_14(pair: Pair) -> None:
    native = qemu_session(pair.native)
    for step in ("create", "shape", "to_qcow2", "check", "to_raw", "compare"):
        run = native[step]
        assert isinstance(run, dict) and run["rc"] == 0, run
    viewed = qemu_session(pair.view_dir)
    for key in native:
        assert viewed[key] == native[key], key
    sizes = _info(pair.backing, "disk.raw")
    assert sizes["virtual-size"] == 1 << 30
    assert int(str(sizes["actual-size"])) < 16 << 20, "the image is no longer sparse"
