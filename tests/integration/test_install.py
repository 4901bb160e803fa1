"""`make install` / `make uninstall` (issue 15 item 8): a self-contained runtime in PREFIX that
every user can run, without test tools, with a man page and shell completions generated from
the argument parser, and an uninstall that removes exactly what install made.

Runs the real targets into a temporary PREFIX and temporary link directories (nothing is
written under /usr/local or /opt). Needs the package index (pip) like `make setup` does;
pip's cache makes repeated runs quick.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.dirs import fresh_dir
from tests.support.users import Users, run_as

REPO = Path(__file__).resolve().parents[2]
TEST_TOOLS = ("pytest", "mypy", "ruff", "hypothesis", "_pytest", "argparse_manpage", "shtab")


def _make(target: str, dirs: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    args = [f"{key}={value}" for key, value in dirs.items()]
    return subprocess.run(["make", "-s", "-C", str(REPO), target, *args], capture_output=True,
                          text=True, timeout=900, check=False)


@pytest.mark.timeout(900)
def test_make_install_and_uninstall(test_root: Path, users: Users) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    base = fresh_dir(test_root, "install-")
    dirs = {"PREFIX": base / "opt" / "fusemount", "BINDIR": base / "bin",
            "MANDIR": base / "man", "BASHCOMPDIR": base / "bash", "ZSHCOMPDIR": base / "zsh",
            "UNITDIR": base / "systemd"}
    prefix = dirs["PREFIX"]

    installed = _make("install", dirs)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # An unprivileged user runs the installed command (no checkout, no pyenv under /root).
    command = dirs["BINDIR"] / "fusemount"
    assert command.resolve() == prefix / "bin" / "fusemount"
    version = run_as(users.alice, [str(command), "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("fusemount ")
    helped = run_as(users.alice, [str(command), "help"])
    assert helped.returncode == 0 and "status" in helped.stdout, helped.stderr

    site = next(prefix.glob("lib/python3*/site-packages"))
    present = {p.name for p in site.iterdir()}
    assert "fusemount" in present and "pyfuse3" in present
    assert not present & set(TEST_TOOLS), present & set(TEST_TOOLS)
    assert (prefix / "share" / "doc" / "fusemount" / "LICENSE").read_text().startswith("MIT")
    # The runtime serves with the same patched binding as the checkout (README "The binding").
    patched = subprocess.run(
        [str(prefix / "bin" / "python"), "-c",
         "import pyfuse3; print(all(hasattr(pyfuse3.Operations, m) for m in "
         "('statfs_inode', 'fallocate', 'lseek', 'copy_file_range')))"],
        capture_output=True, text=True, timeout=60, check=False)
    assert patched.stdout.strip() == "True", patched.stdout + patched.stderr

    page = dirs["MANDIR"] / "man8" / "fusemount.8"
    assert page.resolve().is_file()
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                                  timeout=60, check=False, env={"MANPAGER": "cat",
                                                                "PATH": "/usr/bin:/bin"})
    elif shutil.which("groff"):
        rendered = subprocess.run(["groff", "-man", "-Tutf8", str(page)], capture_output=True,
                                  text=True, timeout=60, check=False)
    else:
        pytest.skip("neither man nor groff is installed to render the page")
    assert rendered.returncode == 0, rendered.stderr
    assert "FUSEMOUNT(8)" in rendered.stdout
    assert "fusemount attach" in rendered.stdout and "exit status" in rendered.stdout

    bash = dirs["BASHCOMPDIR"] / "fusemount"
    zsh = dirs["ZSHCOMPDIR"] / "_fusemount"
    assert "attach" in bash.read_text() and "attach" in zsh.read_text()
    completed = subprocess.run(
        ["bash", "-c", f"source {bash}; COMP_WORDS=(fusemount sta); COMP_CWORD=1; "
         "_shtab_fusemount fusemount sta fusemount; echo ${COMPREPLY[@]}"],
        capture_output=True, text=True, timeout=30, check=False)
    assert completed.stdout.split() == ["status"], completed

    unit = (dirs["UNITDIR"] / "fusemount@.service").read_text()
    assert f"ExecStart={command} serve %f" in unit
    assert f"file:{prefix}/share/doc/fusemount/README.md" in unit

    # Never replaces a directory that is not a runtime it made.
    foreign = dict(dirs, PREFIX=base / "not-ours")
    (base / "not-ours").mkdir()
    (base / "not-ours" / "keep").write_text("x")
    refused = _make("install", foreign)
    assert refused.returncode != 0 and "not replacing" in refused.stderr
    assert (base / "not-ours" / "keep").exists()

    removed = _make("uninstall", dirs)
    assert removed.returncode == 0, removed.stderr
    assert not prefix.exists()
    leftovers = [p for p in base.rglob("*") if not p.is_dir() and "not-ours" not in p.parts]
    assert leftovers == []
