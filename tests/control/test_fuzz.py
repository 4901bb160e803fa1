"""A seeded fuzz of the ctl file (SPEC 4): thousands of random commands, valid words mixed
with junk. Every write must succeed or fail with an errno of the SPEC's table, with a reply
that agrees; the daemon must stay up; the table may change only through ok commands.
"""

from __future__ import annotations

import errno
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from tests.support.control import DOCUMENTED_ERRNOS, names_listed, state_table
from tests.support.daemon import ViewFactory
from tests.support.dirs import SourceFactory

SEED = 0x5EED
COMMANDS = 3000
MAX_COMMAND_BYTES = 512


class _Generator:
    """Random ctl writes from a vocabulary of good and bad words (never `expire=`, which
    would let the table change by itself, and never `/`, whose clone holds the view)."""

    def __init__(self, rng: random.Random, sources: list[Path], scratch: Path) -> None:
        self.rng = rng
        (scratch / "file").write_text("x")
        (scratch / "link").symlink_to(sources[0])
        self.names = ["n0", "n1", "n2", "n3"]
        self.bad_names = ["", "-x", "a/b", "..", ".", "\u00e4", "n" * 65, "n 0", "*"]
        self.paths = [str(s) for s in sources]
        self.bad_paths = [
            str(scratch / "file"),
            str(scratch / "link"),
            str(scratch / "missing"),
            "relative/dir",
            "/proc/self/cwd",
            str(sources[0]) + "/../" + sources[1].name,
            str(sources[0]) + "//./",
        ]
        self.holders = ["h0", "h1", "h2", "v:1", "a.b-c_d"]
        self.bad_holders = ["", "h/0", "h 0", "h" * 129, "h@1"]
        self.options = [
            "ro",
            "rw",
            "force",
            "owner=root",
            "owner=0",
            "owner=fmt_nosuch",
            "owner=",
            "allow=root:ro",
            "allow=*:ro",
            "allow=*:rw",
            "allow=@root:rw",
            "allow=bad",
            "allow=",
            "options=size=1m",
            "options=bogus",
            "options=suid",
            "colour=red",
            "ro=1",
            "=",
            "squash=root",
            "squash=maybe",
        ]
        self.junk = ["'", '"', "\\", "'a b'", "$HOME", "`id`", "#", ";", "&&", "\t", "\u2028"]
        self.fstypes = ["tmpfs", "ext4", "bogusfs", "TMPFS", "proc"]

    def _name(self) -> str:
        return self.rng.choice(self.names if self.rng.random() < 0.85 else self.bad_names)

    def _path(self) -> str:
        return self.rng.choice(self.paths if self.rng.random() < 0.7 else self.bad_paths)

    def _holder(self) -> str:
        return self.rng.choice(self.holders if self.rng.random() < 0.85 else self.bad_holders)

    def _extras(self) -> list[str]:
        words: list[str] = []
        for _ in range(self.rng.choice([0, 0, 1, 1, 2, 3])):
            roll = self.rng.random()
            if roll < 0.3:
                words.append("holder=" + self._holder())
            elif roll < 0.9:
                words.append(self.rng.choice(self.options))
            else:
                words.append(self.rng.choice(self.junk))
        return words

    def words(self) -> list[str]:
        verb = self.rng.choice(
            ["attach"] * 5
            + ["detach"] * 4
            + ["hold"] * 3
            + ["release"] * 3
            + ["set"] * 2
            + ["mount", "ATTACH", "rm", ""]
        )
        if verb == "attach":
            return [verb, self._name(), self._path(), *self._extras()]
        if verb == "mount":
            fstype = self.rng.choice(self.fstypes)
            source = "none" if self.rng.random() < 0.7 else self._path()
            return [verb, self._name(), fstype, source, *self._extras()]
        if verb in ("hold", "release"):
            return [verb, self._name(), self._holder(), *self._extras()[:1]]
        return [verb, self._name(), *self._extras()]

    def command(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.03:
            return self.rng.randbytes(self.rng.randrange(1, 64))
        if roll < 0.05:
            return ("x" * (MAX_COMMAND_BYTES + self.rng.randrange(1, 50))).encode()
        text = " ".join(self.words())
        data = text.encode()
        if roll < 0.07:
            cut = self.rng.randrange(len(data) + 1)
            poison = self.rng.choice([b"\xff", b"\xc3", b"\x00", b"\n", b"\r"])
            data = data[:cut] + poison + data[cut:]
        elif roll < 0.10:
            data += b"\n" + data
        elif roll < 0.55:
            data += b"\n"
        return data


def _state_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.mark.timeout(120)
def test_random_commands_get_documented_errnos_and_change_nothing_when_refused(
    view_factory: ViewFactory, new_source: SourceFactory, scratch: Path
) -> None:
    view = view_factory(
        f"[limits]\nmax_subtrees = 3\nmax_holders = 3\nmax_command_bytes = {MAX_COMMAND_BYTES}\n"
    )
    generator = _Generator(random.Random(SEED), [new_source() for _ in range(3)], scratch)
    ctl = os.open(view.path / ".fusemount" / "ctl", os.O_RDWR)
    results: Counter[str] = Counter()
    wrong: list[str] = []
    state = _state_bytes(view.state)
    listing = view.mounts_json()
    try:
        for _ in range(COMMANDS):
            command = generator.command()
            try:
                written = os.write(ctl, command)
                result = "ok"
                if written != len(command):
                    wrong.append(f"{command!r}: short write {written}")
            except OSError as exc:
                result = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            results[result] += 1
            reply = json.loads(os.read(ctl, 65536))
            if reply.get("ok") is not (result == "ok") or (
                result != "ok" and reply.get("errno") != result
            ):
                wrong.append(f"{command!r}: write {result}, reply {reply!r}")
            if result != "ok" and result not in DOCUMENTED_ERRNOS:
                wrong.append(f"{command!r}: undocumented errno {result}: {reply.get('message')}")
            new_state = _state_bytes(view.state)
            if result != "ok" and new_state != state:
                wrong.append(f"{command!r}: refused with {result} but the state file changed")
            state = new_state
            new_listing = view.mounts_json()
            if result != "ok" and new_listing != listing:
                wrong.append(f"{command!r}: refused with {result} but mounts.json changed")
            listing = new_listing
    finally:
        os.close(ctl)
    assert view.daemon.running, "daemon died during the fuzz"
    assert wrong == [], f"{len(wrong)} problems ({dict(results)}):\n" + "\n".join(wrong[:40])
    assert results["ok"] > 100 and results["EINVAL"] > 100, results
    # The table, the listing and the state file agree at the end.
    assert names_listed(view.path) == {
        str(r["name"]) for r in view.mounts_json() if r["state"] == "attached"
    }
    assert set(state_table(view.state)) == {str(r["name"]) for r in view.mounts_json()}
