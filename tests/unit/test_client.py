"""The Python client and the CLI wrappers (SPEC 4 ctl protocol, SPEC 9) without a daemon.

ctl is played by a scripted Transport; mounts.json and version are plain files in a fake
view, which reads the same way a direct-I/O control file does.
"""

from __future__ import annotations

import errno
import json
import shlex
from pathlib import Path

import pytest

from fusemount.cli import wrappers
from fusemount.client import Client, ControlFailed, CtlFile, MountRecord
from fusemount.core.protocol import Attach, Mount, Set, parse
from fusemount.core.records import Access, GrantSpec

OK = b'{"ok": true}\n'
ENOSPC_REPLY = b'{"ok": false, "errno": "ENOSPC", "message": "subtree limit reached"}\n'

FULL_RECORD: dict[str, object] = {
    "name": "data",
    "kind": "attach",
    "source": "/srv/data",
    "state": "attached",
    "reason": "",
    "ro": True,
    "owner": 1000,
    "allow": ["alice:ro", "@team:rw", "*:ro"],
    "holders": ["vol-1", "vol-2"],
    "dev": 2049,
    "ino": 128,
    "mount_id": 77,
    "fstype": "ext4",
    "open_files": 3,
    "access": "rw",
    "health": "ok",
}


class ScriptedCtl:
    """A Transport that records every write and answers with a scripted (errno, reply)."""

    def __init__(self, failed: int | None = None, reply: bytes = OK) -> None:
        self.failed = failed
        self.reply = reply
        self.sent: list[bytes] = []

    def transact(self, data: bytes) -> tuple[int | None, bytes]:
        self.sent.append(data)
        return self.failed, self.reply.split(b"\n", 1)[0]


class UnopenableCtl:
    def transact(self, data: bytes) -> tuple[int | None, bytes]:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")


def fake_view(
    tmp_path: Path,
    records: list[dict[str, object]] | None = None,
    version: str = "fusemount 0.1.0\n",
) -> Path:
    control = tmp_path / "view" / ".fusemount"
    control.mkdir(parents=True)
    (control / "mounts.json").write_text(json.dumps(records or []))
    (control / "version").write_text(version)
    (control / "mounts").write_text("data /srv/data attached\n")
    return tmp_path / "view"


def sent_words(ctl: ScriptedCtl) -> list[str]:
    assert len(ctl.sent) == 1, ctl.sent
    return shlex.split(ctl.sent[0].decode())


# --- quoting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "a b",
        "x; detach other",
        "x ro allow=*:ro",
        "'quoted'",
        '"dq" \\ back',
        "$(reboot)",
        "-rf",
        "",
    ],
)
def test_attach_hostile_name_and_source_stay_one_word_each(hostile: str) -> None:
    ctl = ScriptedCtl()
    Client("/v", transport=ctl).attach(hostile, "/srv/my " + hostile)
    assert sent_words(ctl) == ["attach", hostile, "/srv/my " + hostile]


def test_hostile_holder_and_owner_cannot_add_options() -> None:
    ctl = ScriptedCtl()
    client = Client("/v", transport=ctl)
    client.hold("data", "h ro")
    client.set("data", owner="alice allow=*:ro")
    assert [shlex.split(s.decode()) for s in ctl.sent] == [
        ["hold", "data", "h ro"],
        ["set", "data", "owner=alice allow=*:ro"],
    ]


def test_name_with_newline_is_still_one_write() -> None:
    # The daemon refuses a multi-line write whole (EINVAL); it must never see two commands.
    ctl = ScriptedCtl()
    Client("/v", transport=ctl).detach("x\ndetach y")
    assert len(ctl.sent) == 1
    assert shlex.split(ctl.sent[0].decode()) == ["detach", "x\ndetach y"]


def test_attach_with_every_option_parses_back_to_the_same_command() -> None:
    ctl = ScriptedCtl()
    Client("/v", transport=ctl).attach(
        "data",
        "/srv/data dir",
        ro=True,
        owner="alice",
        allow=["alice:ro", "@team:rw", "*:ro"],
        holder="vol-1",
        expire_s=3600,
    )
    grants = (
        GrantSpec("alice", False, Access.RO),
        GrantSpec("team", True, Access.RW),
        GrantSpec("*", False, Access.RO),
    )
    assert parse(ctl.sent[0]) == Attach(
        "data", "/srv/data dir", True, "alice", grants, "vol-1", 3600.0
    )


def test_mount_and_set_parse_back_to_the_same_command() -> None:
    ctl = ScriptedCtl()
    client = Client("/v", transport=ctl)
    client.mount("scratch", "tmpfs", "none", options="size=64m,mode=0755", owner=1000)
    client.set("scratch", ro=False, allow=[])
    assert parse(ctl.sent[0]) == Mount(
        "scratch", "tmpfs", "none", options="size=64m,mode=0755", owner="1000"
    )
    assert parse(ctl.sent[1]) == Set("scratch", ro=False, allow=())


def test_detach_force_and_plain_words() -> None:
    ctl = ScriptedCtl()
    client = Client("/v", transport=ctl)
    client.detach("data", force=True)
    client.release("data", "vol-1")
    assert ctl.sent == [b"detach data force", b"release data vol-1"]


def test_allow_as_one_string_is_refused() -> None:
    ctl = ScriptedCtl()
    with pytest.raises(TypeError):
        Client("/v", transport=ctl).attach("d", "/srv/d", allow="alice:ro")
    assert ctl.sent == []


def test_allow_entry_with_comma_cannot_smuggle_a_grant() -> None:
    ctl = ScriptedCtl()
    with pytest.raises(ValueError, match="bad entry"):
        Client("/v", transport=ctl).set("d", allow=["alice:ro,*:ro"])
    assert ctl.sent == []


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_expire_must_be_positive_and_finite(seconds: float) -> None:
    ctl = ScriptedCtl()
    with pytest.raises(ValueError, match="expire_s"):
        Client("/v", transport=ctl).attach("d", "/srv/d", expire_s=seconds)
    assert ctl.sent == []


# --- replies and errors ------------------------------------------------------------------


def test_command_returns_the_parsed_reply() -> None:
    reply = b'{"ok": true, "dev": 2049, "ino": 2, "mount_id": 5, "fstype": "ext4"}\n'
    client = Client("/v", transport=ScriptedCtl(reply=reply))
    assert client.attach("d", "/srv/d") == {
        "ok": True,
        "dev": 2049,
        "ino": 2,
        "mount_id": 5,
        "fstype": "ext4",
    }


def test_failed_write_raises_with_the_reply_errno_and_message() -> None:
    client = Client("/v", transport=ScriptedCtl(errno.ENOSPC, ENOSPC_REPLY))
    with pytest.raises(ControlFailed) as info:
        client.attach("d", "/srv/d")
    assert isinstance(info.value, OSError)
    assert info.value.errno == 28
    assert info.value.errno_name == "ENOSPC"
    assert info.value.message == "subtree limit reached"
    assert str(info.value) == "[Errno 28] subtree limit reached"


def test_reply_errno_wins_over_the_write_errno() -> None:
    client = Client("/v", transport=ScriptedCtl(errno.EIO, ENOSPC_REPLY))
    with pytest.raises(ControlFailed) as info:
        client.detach("d")
    assert (info.value.errno, info.value.errno_name) == (errno.ENOSPC, "ENOSPC")


def test_failed_write_without_reply_falls_back_to_strerror() -> None:
    client = Client("/v", transport=ScriptedCtl(errno.EBUSY, b""))
    with pytest.raises(ControlFailed) as info:
        client.detach("d")
    assert (info.value.errno, info.value.errno_name) == (errno.EBUSY, "EBUSY")
    assert info.value.message == "Device or resource busy"


def test_reply_with_unknown_errno_name_keeps_the_write_errno_and_message() -> None:
    reply = b'{"ok": false, "errno": "EWHATEVER", "message": "odd"}'
    client = Client("/v", transport=ScriptedCtl(errno.EACCES, reply))
    with pytest.raises(ControlFailed) as info:
        client.detach("d")
    assert (info.value.errno, info.value.message) == (errno.EACCES, "odd")


def test_unopenable_ctl_raises_with_the_path() -> None:
    client = Client("/v", transport=UnopenableCtl())
    with pytest.raises(ControlFailed) as info:
        client.hold("d", "h")
    assert info.value.errno == errno.ENOTCONN
    assert info.value.message == "/v/.fusemount/ctl: Transport endpoint is not connected"


@pytest.mark.parametrize("reply", [b"", b"not json", b"[1]", b'{"dev": 1}'])
def test_accepted_command_with_broken_reply_is_a_protocol_error(reply: bytes) -> None:
    client = Client("/v", transport=ScriptedCtl(None, reply))
    with pytest.raises(ControlFailed) as info:
        client.detach("d")
    assert info.value.errno_name == "EPROTO"
    assert "command accepted" in info.value.message


def test_accepted_write_with_refusing_reply_raises_the_refusal() -> None:
    client = Client("/v", transport=ScriptedCtl(None, ENOSPC_REPLY))
    with pytest.raises(ControlFailed) as info:
        client.detach("d")
    assert (info.value.errno, info.value.message) == (errno.ENOSPC, "subtree limit reached")


def test_ctlfile_writes_once_and_reads_the_reply_on_the_same_descriptor(tmp_path: Path) -> None:
    # A regular file stands in for ctl: the write overwrites the first bytes and the read
    # continues at the write's end, so it returns the "reply" only if both share one fd.
    command = b"detach data"
    ctl = tmp_path / "ctl"
    ctl.write_bytes(b"#" * len(command) + b'{"ok": true, "detached": "data"}\nleftover\n')
    reply = Client(tmp_path, transport=CtlFile(ctl)).command(command.decode())
    assert reply == {"ok": True, "detached": "data"}
    assert ctl.read_bytes().startswith(command + b"{")


def test_ctlfile_on_a_non_view_raises_enoent_saying_so(tmp_path: Path) -> None:
    with pytest.raises(ControlFailed) as info:
        Client(tmp_path).detach("d")
    assert info.value.errno == errno.ENOENT
    assert info.value.message == f"{tmp_path}: not a fusemount view (not a mount point)"


# --- mounts.json, mounts, version ------------------------------------------------------


def test_mounts_parses_every_field(tmp_path: Path) -> None:
    view = fake_view(tmp_path, [FULL_RECORD])
    assert Client(view).mounts() == [
        MountRecord(
            name="data",
            kind="attach",
            source="/srv/data",
            state="attached",
            reason="",
            ro=True,
            owner=1000,
            allow=("alice:ro", "@team:rw", "*:ro"),
            holders=("vol-1", "vol-2"),
            dev=2049,
            ino=128,
            mount_id=77,
            fstype="ext4",
            open_files=3,
            access="rw",
            health="ok",
        )
    ]


def test_mounts_ignores_unknown_keys_and_defaults_missing_ones(tmp_path: Path) -> None:
    minimal: dict[str, object] = {
        "name": "old",
        "state": "failed",
        "reason": "identity changed",
        "dev": None,
    }
    view = fake_view(tmp_path, [{**FULL_RECORD, "future_key": [1, 2]}, minimal])
    first, second = Client(view).mounts()
    assert first.name == "data" and first.holders == ("vol-1", "vol-2")
    assert second == MountRecord(name="old", state="failed", reason="identity changed")
    assert (second.dev, second.owner, second.holders, second.health) == (None, None, (), "ok")


def test_mounts_empty_array_is_no_records(tmp_path: Path) -> None:
    assert Client(fake_view(tmp_path, [])).mounts() == []


@pytest.mark.parametrize(
    "content",
    [
        b"{}",
        b"[1]",
        b"not json",
        b'[{"kind": "attach"}]',
        b'[{"name": "d", "ro": "yes"}]',
        b'[{"name": "d", "open_files": true}]',
        b'[{"name": "d", "holders": "vol-1"}]',
    ],
)
def test_mounts_malformed_listing_is_a_protocol_error(tmp_path: Path, content: bytes) -> None:
    view = fake_view(tmp_path)
    (view / ".fusemount" / "mounts.json").write_bytes(content)
    with pytest.raises(ControlFailed) as info:
        Client(view).mounts()
    assert info.value.errno == errno.EPROTO
    assert "mounts.json" in info.value.message


def test_mounts_of_a_non_view_raises_enoent(tmp_path: Path) -> None:
    with pytest.raises(ControlFailed) as info:
        Client(tmp_path).mounts()
    assert info.value.errno == errno.ENOENT


def test_version_returns_the_number(tmp_path: Path) -> None:
    assert Client(fake_view(tmp_path)).version() == "0.1.0"


def test_version_refuses_a_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ControlFailed) as info:
        Client(fake_view(tmp_path, version="sshfs 3.7\n")).version()
    assert info.value.errno == errno.EPROTO


def test_mounts_text_reads_the_mounts_file(tmp_path: Path) -> None:
    assert Client(fake_view(tmp_path)).mounts_text() == "data /srv/data attached\n"


# --- the wrappers ------------------------------------------------------------------------


def run_with(ctl: ScriptedCtl, argv: list[str]) -> int:
    return wrappers.run(argv, connect=lambda view: Client(view, transport=ctl))


def test_wrapper_sends_the_words_after_view_and_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ctl = ScriptedCtl()
    argv = ["attach", "/mnt/view", "data", "/srv/data", "ro", "allow=alice:ro"]
    assert run_with(ctl, argv) == 0
    assert ctl.sent == [b"attach data /srv/data ro allow=alice:ro"]
    assert capsys.readouterr() == ("", "")


def test_wrapper_requotes_words_so_each_stays_one(capsys: pytest.CaptureFixture[str]) -> None:
    ctl = ScriptedCtl()
    assert run_with(ctl, ["hold", "/mnt/view", "data", "x; detach data", "-h"]) == 0
    assert sent_words(ctl) == ["hold", "data", "x; detach data", "-h"]


def test_wrapper_verbose_prints_the_reply(capsys: pytest.CaptureFixture[str]) -> None:
    ctl = ScriptedCtl(reply=b'{"ok": true, "holders": ["h"]}')
    assert run_with(ctl, ["hold", "-v", "/mnt/view", "data", "h"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "holders": ["h"]}


def test_wrapper_refusal_exits_1_with_message_and_errno(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ctl = ScriptedCtl(errno.ENOSPC, ENOSPC_REPLY)
    assert run_with(ctl, ["attach", "/mnt/view", "data", "/srv/data"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "fusemount: subtree limit reached (ENOSPC)\n")


def test_wrapper_message_cannot_break_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    reply = b'{"ok": false, "errno": "EINVAL", "message": "bad\\nname \\u001b[31m"}'
    assert run_with(ScriptedCtl(errno.EINVAL, reply), ["detach", "/v", "x"]) == 1
    assert capsys.readouterr().err == "fusemount: bad\\nname \\x1b[31m (EINVAL)\n"


@pytest.mark.parametrize(
    "argv",
    [[], ["attach"], ["frobnicate", "/mnt/view"], ["ls"], ["ls", "/v", "--bogus"]],
)
def test_wrapper_usage_error_exits_2_and_sends_nothing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    ctl = ScriptedCtl()
    assert run_with(ctl, argv) == 2
    assert ctl.sent == []
    assert "usage: fusemount" in capsys.readouterr().err


@pytest.mark.parametrize("verb", sorted(wrappers.VERBS))
def test_wrapper_help_has_a_real_example(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_with(ScriptedCtl(), [verb, "--help"]) == 0
    out = capsys.readouterr().out
    example = out.split("example:\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(example)
    assert words[:3] == ["fusemount", verb, "/mnt/view"]
    if verb != "ls":
        parse(shlex.join([verb, *words[3:]]).encode())  # raises unless the daemon would accept


def test_ls_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stalled: dict[str, object] = {
        "name": "scratch",
        "kind": "mount",
        "source": "none",
        "health": "stalled",
    }
    failed: dict[str, object] = {
        "name": "gone",
        "source": "/srv/gone",
        "state": "failed",
        "health": "failed",
        "reason": "source /srv/gone was replaced (identity changed)",
    }
    view = fake_view(tmp_path, [FULL_RECORD, stalled, failed])
    assert wrappers.run(["ls", str(view)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(maxsplit=6) for line in lines] == [
        ["NAME", "STATE", "KIND", "SOURCE", "ACCESS", "HOLDERS", "REASON"],
        ["data", "attached", "attach", "/srv/data", "rw", "vol-1,vol-2", "-"],
        ["scratch", "attached/stalled", "mount", "none", "ro", "-", "-"],
        ["gone", "failed", "attach", "/srv/gone", "ro", "-",
         "source /srv/gone was replaced (identity changed)"],
    ]
    assert lines[1].index("/srv/data") == lines[0].index("SOURCE")


def test_ls_json_prints_the_listing_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    view = fake_view(tmp_path, [FULL_RECORD])
    assert wrappers.run(["ls", str(view), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [FULL_RECORD]


def test_ls_of_a_non_view_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert wrappers.run(["ls", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"fusemount: {tmp_path}: not a fusemount view (not a mount point) (ENOENT)\n"


def test_ls_json_refuses_a_broken_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    view = fake_view(tmp_path)
    (view / ".fusemount" / "mounts.json").write_text("{oops")
    assert wrappers.run(["ls", str(view)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("(EPROTO)\n")
    # --json: the error is a JSON object on stdout, nothing on stderr
    assert wrappers.run(["ls", str(view), "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["errno"] == "EPROTO"


# --- issue 15 item 6: squash=, relative SOURCE ---------------------------------------------


def test_set_sends_squash_and_refuses_other_values() -> None:
    ctl = ScriptedCtl()
    Client("/v", transport=ctl).set("d", squash="root")
    assert sent_words(ctl) == ["set", "d", "squash=root"]
    with pytest.raises(ValueError):
        Client("/v", transport=ScriptedCtl()).set("d", squash="all")  # type: ignore[arg-type]


def test_relative_source_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk.img").write_bytes(b"")
    resolve = wrappers.resolve_source
    assert resolve("attach", ["d", "src", "ro"]) == ["d", str(tmp_path / "src"), "ro"]
    assert resolve("attach", ["d", "/abs"]) == ["d", "/abs"]
    assert resolve("mount", ["d", "ext4", "disk.img"]) == ["d", "ext4", str(tmp_path / "disk.img")]
    assert resolve("mount", ["d", "tmpfs", "none"]) == ["d", "tmpfs", "none"]
    assert resolve("hold", ["d", "h"]) == ["d", "h"]
    assert resolve("attach", ["d"]) == ["d"]


def test_wrapper_sends_a_relative_source_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ctl = ScriptedCtl()
    assert run_with(ctl, ["attach", "/mnt/view", "data", "sub dir"]) == 0
    assert sent_words(ctl) == ["attach", "data", str(tmp_path / "sub dir")]
