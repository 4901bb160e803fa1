"""The ctl protocol end to end (SPEC 4 "The ctl protocol"): one command per write, the errno
of a refusal on the write itself and again in the JSON reply, replies per open file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.control import check_refusal, names_listed, record_of
from tests.support.ctl import Reply
from tests.support.daemon import ViewFactory, ViewHandle
from tests.support.dirs import SourceFactory


def _ctl_path(view: ViewHandle) -> Path:
    return view.path / ".fusemount" / "ctl"


@contextlib.contextmanager
def _opened_ctl(view: ViewHandle, flags: int) -> Iterator[int]:
    """A descriptor of the view's ctl file opened with flags, for the block."""
    fd = os.open(_ctl_path(view), flags)
    try:
        yield fd
    finally:
        os.close(fd)


def _reply_of(fd: int) -> dict[str, object]:
    raw = os.read(fd, 65536)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, f"reply is not one line: {raw!r}"
    data = json.loads(raw)
    assert isinstance(data, dict), raw
    return data


def _assert_refused(reply: Reply, code: int) -> None:
    """The write failed with code and the reply says the same, with a message, and no more."""
    check_refusal(reply, code, "")
    assert set(reply.data) == {"ok", "errno", "message"}, reply.raw


@pytest.mark.timeout(60)
def test_attach_reply_names_dev_ino_mount_id_fstype(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_RDWR) as fd:
        command = f"attach data {source}".encode()
        assert os.write(fd, command) == len(command)
        reply = _reply_of(fd)
    st = os.stat(source)
    assert reply["ok"] is True
    assert (reply["dev"], reply["ino"]) == (st.st_dev, st.st_ino)
    assert isinstance(reply["mount_id"], int) and reply["mount_id"] > 0
    assert reply["fstype"] == record_of(view.mounts_json(), "data")["fstype"]
    assert isinstance(reply["fstype"], str) and reply["fstype"]


@pytest.mark.timeout(60)
def test_trailing_newline_is_optional(view: ViewHandle, new_source: SourceFactory) -> None:
    view.ok(f"attach plain {new_source()}")
    view.ok(f"attach newline {new_source()}\n")
    assert names_listed(view.path) == {"plain", "newline"}


# Each is EINVAL (SPEC 4 "Errors", first row). A bug that accepted one must not attach
# anything real, hence the missing source.
MALFORMED: list[tuple[str, bytes]] = [
    ("two-lines", b"attach a /nonexistent\nattach b /nonexistent\n"),
    ("two-lines-no-final-newline", b"detach a\ndetach b"),
    ("carriage-return", b"detach a\r\n"),
    ("empty-line", b"\n"),
    ("invalid-utf8", b"detach \xff\xfe"),
    ("invalid-utf8-verb", b"\xc3\x28 attach"),
    ("nul-byte", b"detach a\x00b"),
    ("control-bytes", bytes(range(1, 32))),
    ("unknown-command", b"frobnicate a"),
    ("verb-is-case-sensitive", b"ATTACH a /nonexistent"),
    ("unknown-flag", b"attach a /nonexistent bogus"),
    ("unknown-option", b"attach a /nonexistent colour=red"),
    ("flag-twice", b"attach a /nonexistent ro ro"),
    ("attach-missing-source", b"attach a"),
    ("attach-no-arguments", b"attach"),
    ("detach-no-name", b"detach"),
    ("detach-extra-word", b"detach a b"),
    ("hold-missing-holder", b"hold a"),
    ("release-extra-word", b"release a h extra"),
    ("set-nothing-to-change", b"set a"),
    ("name-leading-dash", b"attach -a /nonexistent"),
    ("name-leading-dot", b"attach .a /nonexistent"),
    ("name-with-slash", b"attach a/b /nonexistent"),
    ("name-dotdot", b"attach .. /nonexistent"),
    ("name-65-chars", b"attach " + b"a" * 65 + b" /nonexistent"),
    ("relative-source", b"attach a relative/path"),
    ("holder-with-space", b"hold a 'h 1'"),
    ("holder-with-slash", b"hold a h/1"),
    ("holder-129-chars", b"hold a " + b"h" * 129),
    ("empty-holder", b"attach a /nonexistent holder="),
    ("empty-owner", b"attach a /nonexistent owner="),
    ("allow-without-mode", b"attach a /nonexistent allow=alice"),
    ("allow-everyone-rw", b"attach a /nonexistent allow=*:rw"),
    ("unclosed-quote", b"attach a '/tmp"),
    ("trailing-backslash", b"attach a /nonexistent\\"),
    ("attach-bad-holder", b"attach a /nonexistent holder=a/b"),
    ("owner-unknown-user", b"attach a /nonexistent owner=fmt_nosuchuser"),
    ("allow-unknown-group", b"attach a /nonexistent allow=@fmt_nosuchgroup:ro"),
    ("detach-bad-flag", b"detach a now"),
]


@pytest.mark.timeout(60)
def test_malformed_command_is_einval_on_write_and_in_reply(view: ViewHandle) -> None:
    wrong: list[str] = []
    for label, command in MALFORMED:
        reply = view.ctl(command)
        try:
            _assert_refused(reply, errno.EINVAL)
        except AssertionError:
            wrong.append(f"{label}: {reply.describe(command)}")
    assert wrong == [], "\n".join(wrong)
    assert view.mounts_json() == []


@pytest.mark.timeout(60)
def test_words_are_split_like_a_shell(view: ViewHandle, test_root: Path) -> None:
    source = test_root / "dir with 'quotes' and spaces"
    source.mkdir()
    source.chmod(0o755)
    (source / "f").write_text("x")
    quoted = str(source).replace("'", "'\\''")
    view.ok(f"attach spaced '{quoted}'")
    assert (view.path / "spaced" / "f").read_text() == "x"
    view.ok('detach "spaced"')
    assert names_listed(view.path) == set()


@pytest.mark.timeout(60)
def test_command_over_4096_bytes_is_e2big(view: ViewHandle, source: Path) -> None:
    head = f"attach big {source}"
    padded = head + "/." * ((4096 - len(head)) // 2)
    padded += "/" * (4096 - len(padded))
    assert len(padded) == 4096
    _assert_refused(view.ctl(padded + "/"), errno.E2BIG)
    _assert_refused(view.ctl("x" * 5000), errno.E2BIG)
    assert view.mounts_json() == []
    # 4096 bytes exactly is within the limit, and the optional newline does not count.
    view.ok(padded + "\n")
    assert names_listed(view.path) == {"big"}


@pytest.mark.timeout(60)
def test_small_max_command_bytes_is_e2big(view_factory: ViewFactory, source: Path) -> None:
    view = view_factory("[limits]\nmax_command_bytes = 100\n")
    head = f"attach small {source} holder="
    assert len(head) < 100, "test root path too long for this test"
    exact = head + "h" * (100 - len(head))
    reply = view.ctl(exact + "h")
    _assert_refused(reply, errno.E2BIG)
    assert "100" in str(reply.data["message"])
    assert view.mounts_json() == []
    view.ok(exact + "\n")
    assert names_listed(view.path) == {"small"}


@pytest.mark.timeout(60)
def test_every_refusal_has_errno_on_write_and_json_reply(view: ViewHandle, source: Path) -> None:
    _assert_refused(view.ctl("detach missing"), errno.ENOENT)
    (source / "other").mkdir()
    view.ok(f"attach data {source}")
    # Another source (source.parent would contain the view: EINVAL since SPEC 4 changed).
    _assert_refused(view.ctl(f"attach data {source}/other"), errno.EEXIST)
    _assert_refused(view.ctl("release data nobody"), errno.ENOENT)


@pytest.mark.timeout(60)
def test_success_returns_full_length_and_ok_reply(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_RDWR) as fd:
        for command in (f"attach data {source}\n", "hold data h1", "release data h1\n"):
            data = command.encode()
            assert os.write(fd, data) == len(data)
            reply = _reply_of(fd)
            assert reply["ok"] is True, reply


@pytest.mark.timeout(60)
def test_replies_are_per_open_file_description(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_RDWR) as first, _opened_ctl(view, os.O_RDWR) as second:
        os.write(first, f"attach data {source}".encode())
        with pytest.raises(OSError) as refused:
            os.write(second, b"detach nosuch")
        assert refused.value.errno == errno.ENOENT
        # Read in the opposite order: each descriptor still gets its own reply.
        second_reply = _reply_of(second)
        first_reply = _reply_of(first)
    assert second_reply["ok"] is False and second_reply["errno"] == "ENOENT"
    assert first_reply["ok"] is True and first_reply["name"] == "data"


@pytest.mark.timeout(60)
def test_reply_of_another_process_is_not_seen(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_RDWR) as fd:
        os.write(fd, f"attach data {source}".encode())
        # Another process runs a failing command on its own descriptor meanwhile.
        other = subprocess.run(
            ["sh", "-c", f"echo 'detach nosuch' > {_ctl_path(view)}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert other.returncode != 0
        reply = _reply_of(fd)
    assert reply["ok"] is True and reply["name"] == "data"


@pytest.mark.timeout(60)
def test_a_second_command_replaces_the_reply(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_RDWR) as fd:
        with pytest.raises(OSError):
            os.write(fd, b"detach nosuch")
        os.write(fd, f"attach data {source}".encode())
        reply = _reply_of(fd)
    assert reply["ok"] is True and reply["name"] == "data"


@pytest.mark.timeout(60)
def test_open_with_o_trunc_is_accepted(view: ViewHandle, source: Path) -> None:
    with _opened_ctl(view, os.O_WRONLY | os.O_TRUNC) as fd:
        command = f"attach data {source}\n".encode()
        assert os.write(fd, command) == len(command)
    assert names_listed(view.path) == {"data"}
    with _opened_ctl(view, os.O_RDWR | os.O_TRUNC) as fd:
        os.write(fd, b"hold data h1")
        assert _reply_of(fd)["ok"] is True


@pytest.mark.timeout(60)
def test_shell_redirection_succeeds_and_fails_visibly(view: ViewHandle, source: Path) -> None:
    ctl = _ctl_path(view)
    good = subprocess.run(
        ["sh", "-c", f"echo 'attach data {source}' > {ctl}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert names_listed(view.path) == {"data"}
    bad = subprocess.run(
        ["sh", "-c", f"echo 'attach data {source.parent}' > {ctl} && echo reached"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode != 0
    assert "reached" not in bad.stdout
    assert names_listed(view.path) == {"data"}
    assert record_of(view.mounts_json(), "data")["source"] == str(source)


@pytest.mark.timeout(60)
def test_read_before_any_write_returns_nothing(view: ViewHandle) -> None:
    with _opened_ctl(view, os.O_RDWR) as fd:
        assert os.read(fd, 4096) == b""
