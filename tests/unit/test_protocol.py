"""The ctl language (SPEC 4): every verb, every syntax error, and parse() never crashing."""

from __future__ import annotations

import dataclasses
import errno
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusemount.core.protocol import (
    Attach,
    Command,
    Detach,
    Hold,
    Mount,
    Release,
    Set,
    format_command,
    parse,
    render,
    render_error,
    render_ok,
    verb_of,
)
from fusemount.core.records import Access, ControlError, GrantSpec

RO, RW = Access.RO, Access.RW

VALID: list[tuple[bytes, Command]] = [
    (b"attach d /srv/d", Attach("d", "/srv/d")),
    (b"attach d /srv/d\n", Attach("d", "/srv/d")),
    (b'attach d "/srv/with space"', Attach("d", "/srv/with space")),
    (b"attach d /srv/with\\ space", Attach("d", "/srv/with space")),
    (b"attach d '/srv/it''s'", Attach("d", "/srv/its")),
    (b"  attach\td   /srv/d  ", Attach("d", "/srv/d")),
    (b"attach d /srv/d ro", Attach("d", "/srv/d", ro=True)),
    (
        b"attach A-1.b_2 /srv/d expire=3600 holder=pv:ns.1 ro owner=alice",
        Attach("A-1.b_2", "/srv/d", ro=True, owner="alice", holder="pv:ns.1", expire_s=3600.0),
    ),
    (b"attach d /srv/d owner=1000 expire=0.5", Attach("d", "/srv/d", owner="1000", expire_s=0.5)),
    (b"attach d /srv/d owner=svc$", Attach("d", "/srv/d", owner="svc$")),
    (
        b"attach d /srv/d allow=alice:ro,@staff:rw,1001:rw,@27:ro,*:ro",
        Attach(
            "d",
            "/srv/d",
            allow=(
                GrantSpec("alice", False, RO),
                GrantSpec("staff", True, RW),
                GrantSpec("1001", False, RW),
                GrantSpec("27", True, RO),
                GrantSpec("*", False, RO),
            ),
        ),
    ),
    (
        b'attach d /srv/d "allow=alice:ro, bob:rw"',
        Attach("d", "/srv/d", allow=(GrantSpec("alice", False, RO), GrantSpec("bob", False, RW))),
    ),
    (b"attach d /srv/d allow=", Attach("d", "/srv/d", allow=())),
    (b"mount t tmpfs none", Mount("t", "tmpfs", "none")),
    (
        b"mount img ext4 /var/img/a.img ro options=errors=remount-ro,noload holder=h1",
        Mount(
            "img",
            "ext4",
            "/var/img/a.img",
            ro=True,
            options="errors=remount-ro,noload",
            holder="h1",
        ),
    ),
    (
        b'mount t tmpfs none "options=size=8m, mode=0755" owner=root allow=@wheel:rw expire=60',
        Mount(
            "t",
            "tmpfs",
            "none",
            options="size=8m, mode=0755",
            owner="root",
            allow=(GrantSpec("wheel", True, RW),),
            expire_s=60.0,
        ),
    ),
    (b"mount t fuse.sshfs none options=", Mount("t", "fuse.sshfs", "none")),
    (b"hold d vol-1:abc", Hold("d", "vol-1:abc")),
    (b"release d vol-1:abc", Release("d", "vol-1:abc")),
    (b"set d ro", Set("d", ro=True)),
    (b"set d rw", Set("d", ro=False)),
    (b"set d owner=bob", Set("d", owner="bob")),
    (b"set d allow=", Set("d", allow=())),
    (b"set d squash=root", Set("d", squash_root=True)),
    (
        b"set d squash=none rw allow=*:ro",
        Set("d", ro=False, allow=(GrantSpec("*", False, RO),), squash_root=False),
    ),
    (b"detach d", Detach("d")),
    (b"detach d force", Detach("d", force=True)),
    (b"detach " + b"n" * 64, Detach("n" * 64)),
]


@pytest.mark.parametrize(("line", "expected"), VALID, ids=[v[0].decode()[:40] for v in VALID])
def test_parse_valid_command_gives_record(line: bytes, expected: Command) -> None:
    assert parse(line) == expected


def test_parse_user_and_group_with_same_name_are_distinct_grants() -> None:
    cmd = parse(b"attach d /srv/d allow=alice:ro,@alice:rw")
    assert isinstance(cmd, Attach)
    assert cmd.allow == (GrantSpec("alice", False, RO), GrantSpec("alice", True, RW))


# (line, errno, words the message must contain)
ERRORS: list[tuple[bytes, int, str]] = [
    # framing
    (b"", errno.EINVAL, "empty"),
    (b"\n", errno.EINVAL, "empty"),
    (b"   \t ", errno.EINVAL, "empty"),
    (b"detach d\n\n", errno.EINVAL, "more than one line"),
    (b"detach d\ndetach e", errno.EINVAL, "more than one line"),
    (b"detach d\r\n", errno.EINVAL, "more than one line"),
    (b"detach d\rx", errno.EINVAL, "more than one line"),
    ("detach d\u2028".encode(), errno.EINVAL, "more than one line"),
    (b"detach d\x0b", errno.EINVAL, "more than one line"),
    (b"detach d\x00", errno.EINVAL, "NUL"),
    (b"detach \xff", errno.EINVAL, "UTF-8"),
    (b"detach \xed\xa0\x80", errno.EINVAL, "UTF-8"),  # an encoded surrogate
    # splitting
    (b'attach d "/srv/d', errno.EINVAL, "no closing quotation"),
    (b"attach d '/srv/d", errno.EINVAL, "no closing quotation"),
    (b"attach d /srv/d\\", errno.EINVAL, "no escaped character"),
    # verbs
    (b"frobnicate d", errno.EINVAL, "unknown command 'frobnicate'"),
    (b"ATTACH d /srv/d", errno.EINVAL, "unknown command 'ATTACH'"),
    (b'"" d', errno.EINVAL, "unknown command ''"),
    (b"# attach d /srv/d", errno.EINVAL, "unknown command '#'"),  # no comments
    # positionals
    (b"attach", errno.EINVAL, "missing NAME"),
    (b"attach d", errno.EINVAL, "missing SOURCE"),
    (b"mount t tmpfs", errno.EINVAL, "missing SOURCE"),
    (b"hold d", errno.EINVAL, "missing HOLDER"),
    (b"release d", errno.EINVAL, "missing HOLDER"),
    (b"set", errno.EINVAL, "missing NAME"),
    (b"detach", errno.EINVAL, "missing NAME"),
    (b"attach d /srv/d /srv/e", errno.EINVAL, "unexpected argument '/srv/e'"),
    (b"hold d h1 h2", errno.EINVAL, "unexpected argument 'h2'"),
    (b"detach d e", errno.EINVAL, "unexpected argument 'e'"),
    (b"detach d ro", errno.EINVAL, "unexpected argument 'ro'"),
    (b"attach d /srv/d rw", errno.EINVAL, "unexpected argument 'rw'"),
    # options
    (b"attach d /srv/d ro ro", errno.EINVAL, "ro given twice"),
    (b"attach d /srv/d owner=a owner=b", errno.EINVAL, "owner= given twice"),
    (b"set d ro rw", errno.EINVAL, "ro and rw exclude each other"),
    (b"set d rw rw", errno.EINVAL, "rw given twice"),
    (b"detach d force force", errno.EINVAL, "force given twice"),
    (b"attach d /srv/d color=red", errno.EINVAL, "unknown option 'color='"),
    (b"attach d /srv/d options=x", errno.EINVAL, "unknown option 'options='"),
    (b"attach d /srv/d squash=root", errno.EINVAL, "unknown option 'squash='"),
    (b"set d holder=h", errno.EINVAL, "unknown option 'holder='"),
    (b"hold d h owner=x", errno.EINVAL, "unknown option 'owner='"),
    (b"attach d /srv/d =x", errno.EINVAL, "unknown option '='"),
    (b"set d", errno.EINVAL, "nothing to change"),
    (b"set d squash=all", errno.EINVAL, "squash"),
    # names and holders
    (b'attach "my data" /srv/d', errno.EINVAL, "bad name 'my data'"),
    (b"attach .hidden /srv/d", errno.EINVAL, "bad name '.hidden'"),
    (b"attach -d /srv/d", errno.EINVAL, "bad name '-d'"),
    (b"attach a/b /srv/d", errno.EINVAL, "bad name 'a/b'"),
    (b"attach .. /srv/d", errno.EINVAL, "bad name '..'"),
    (b"detach " + b"n" * 65, errno.EINVAL, "bad name"),
    ("detach caf\u00e9".encode(), errno.EINVAL, "bad name"),
    (b"detach ''", errno.EINVAL, "bad name ''"),
    (b"hold d 'a b'", errno.EINVAL, "bad holder id 'a b'"),
    (b"hold d ''", errno.EINVAL, "bad holder id ''"),
    (b"release d a/b", errno.EINVAL, "bad holder id 'a/b'"),
    (b"hold d " + b"h" * 129, errno.EINVAL, "bad holder id"),
    (b"attach d /srv/d holder=", errno.EINVAL, "bad holder id ''"),
    # sources and types
    (b"attach d srv/d", errno.EINVAL, "SOURCE must be an absolute path"),
    (b"attach d ''", errno.EINVAL, "SOURCE must be an absolute path"),
    (b"attach d none", errno.EINVAL, "SOURCE must be an absolute path"),
    (b"mount t tmpfs dev/sdb", errno.EINVAL, "SOURCE must be an absolute path"),
    (b"mount t TMPFS none", errno.EINVAL, "bad filesystem type 'TMPFS'"),
    (b"mount t ../x none", errno.EINVAL, "bad filesystem type"),
    (b"mount t " + b"f" * 33 + b" none", errno.EINVAL, "bad filesystem type"),
    # owner=
    (b"attach d /srv/d owner=", errno.EINVAL, "owner"),
    (b"attach d /srv/d owner=Alice", errno.EINVAL, "owner"),
    (b"attach d /srv/d owner=@staff", errno.EINVAL, "owner"),
    (b"attach d /srv/d owner=-1", errno.EINVAL, "owner"),
    (b"attach d /srv/d owner=4294967295", errno.EINVAL, "owner"),
    (b"set d owner=" + b"a" * 33, errno.EINVAL, "owner"),
    # allow=
    (b"attach d /srv/d allow=*:rw", errno.EINVAL, "'*:rw' is not allowed"),
    (b"attach d /srv/d allow=alice", errno.EINVAL, "must end in :ro or :rw"),
    (b"attach d /srv/d allow=alice:wr", errno.EINVAL, "must end in :ro or :rw"),
    (b"attach d /srv/d allow=alice:ro,", errno.EINVAL, "must end in :ro or :rw"),
    (b"attach d /srv/d allow=alice:ro,,bob:ro", errno.EINVAL, "must end in :ro or :rw"),
    (b"attach d /srv/d allow=:ro", errno.EINVAL, "bad user ''"),
    (b"attach d /srv/d allow=@:ro", errno.EINVAL, "bad group ''"),
    (b"attach d /srv/d allow=@*:ro", errno.EINVAL, "bad group '*'"),
    (b"attach d /srv/d allow=Bob:ro", errno.EINVAL, "bad user 'Bob'"),
    (b"attach d /srv/d allow=a:b:ro", errno.EINVAL, "bad user 'a:b'"),
    (b"attach d /srv/d allow=alice:ro,alice:rw", errno.EINVAL, "'alice' is listed twice"),
    (b"set d allow=@staff:ro,@staff:ro", errno.EINVAL, "'@staff' is listed twice"),
    (b"set d allow=*:ro,*:ro", errno.EINVAL, "'*' is listed twice"),
    # expire=
    (b"attach d /srv/d expire=", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=0", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=-5", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=inf", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=nan", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=1_000", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=0x10", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=1h", errno.EINVAL, "expire"),
    (b"attach d /srv/d expire=315360001", errno.EINVAL, "expire"),
    (b"mount t tmpfs none expire=1e400", errno.EINVAL, "expire"),
]


@pytest.mark.parametrize(
    ("line", "code", "words"), ERRORS, ids=[f"{i}-{e[2][:30]}" for i, e in enumerate(ERRORS)]
)
def test_parse_bad_command_is_refused_with_named_problem(
    line: bytes, code: int, words: str
) -> None:
    with pytest.raises(ControlError) as info:
        parse(line)
    assert info.value.errno == code
    assert words in info.value.message
    assert "\n" not in info.value.message


def test_parse_longest_command_is_accepted_with_or_without_newline() -> None:
    line = b"attach d /" + b"x" * (4096 - len(b"attach d /"))
    assert len(line) == 4096
    assert parse(line) == Attach("d", line[len(b"attach d ") :].decode())
    assert parse(line + b"\n") == parse(line)


def test_parse_one_byte_too_long_is_e2big() -> None:
    line = b"attach d /" + b"x" * (4097 - len(b"attach d /"))
    for data in (line, line + b"\n"):
        with pytest.raises(ControlError) as info:
            parse(data)
        assert info.value.errno == errno.E2BIG


def test_parse_length_is_checked_before_content() -> None:
    with pytest.raises(ControlError) as info:
        parse(b"\xff" * 100, max_bytes=64)
    assert info.value.errno == errno.E2BIG


def test_parse_honours_configured_max_bytes() -> None:
    line = b"detach " + b"n" * 57  # 64 bytes
    assert parse(line, max_bytes=64) == Detach("n" * 57)
    with pytest.raises(ControlError) as info:
        parse(line, max_bytes=63)
    assert info.value.errno == errno.E2BIG


def test_parse_expire_accepts_ten_years_exactly() -> None:
    cmd = parse(b"attach d /srv/d expire=315360000")
    assert isinstance(cmd, Attach)
    assert cmd.expire_s == 315360000.0


def test_commands_are_frozen_and_slotted() -> None:
    for cmd in (
        Attach("d", "/s"),
        Mount("d", "tmpfs", "none"),
        Hold("d", "h"),
        Release("d", "h"),
        Set("d", ro=True),
        Detach("d"),
    ):
        assert not hasattr(cmd, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            cmd.name = "e"  # type: ignore[misc]


def test_verb_of_names_the_command_word() -> None:
    cases: list[tuple[Command, str]] = [
        (Attach("d", "/s"), "attach"),
        (Mount("d", "tmpfs", "none"), "mount"),
        (Hold("d", "h"), "hold"),
        (Release("d", "h"), "release"),
        (Set("d", ro=True), "set"),
        (Detach("d"), "detach"),
    ]
    for cmd, verb in cases:
        assert verb_of(cmd) == verb == cmd.verb
        assert verb_of(parse(format_command(cmd).encode())) == verb


# --- replies ---------------------------------------------------------------------------


def test_render_ok_is_one_json_line_with_ok_first() -> None:
    data = render_ok(dev=2049, ino=2, mount_id=31, fstype="ext4")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert data.startswith(b'{"ok": true')
    assert json.loads(data) == {"ok": True, "dev": 2049, "ino": 2, "mount_id": 31, "fstype": "ext4"}


def test_render_ok_without_fields_is_bare_ok() -> None:
    assert render_ok() == b'{"ok": true}\n'


def test_render_ok_refuses_to_overwrite_ok() -> None:
    with pytest.raises(ValueError):
        render_ok(ok=False)


def test_render_error_uses_symbolic_errno() -> None:
    data = render_error(errno.ENOSPC, "subtree limit reached (max_subtrees=64)")
    assert data == (
        b'{"ok": false, "errno": "ENOSPC", "message": "subtree limit reached (max_subtrees=64)"}\n'
    )


def test_render_error_keeps_hostile_message_on_one_line() -> None:
    message = 'a\nb\r\u2028c"\\\x00\u00e9'
    data = render_error(errno.EINVAL, message)
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert json.loads(data) == {"ok": False, "errno": "EINVAL", "message": message}


def test_render_error_of_parse_failure_round_trips() -> None:
    with pytest.raises(ControlError) as info:
        parse(b'attach "my data" /srv/d')
    assert info.value.errno == errno.EINVAL
    reply = json.loads(render_error(errno.EINVAL, info.value.message))
    assert reply["errno"] == "EINVAL"
    assert "bad name" in reply["message"]


# --- properties ------------------------------------------------------------------------

ALLOWED_ERRNOS = {errno.EINVAL, errno.E2BIG}


def _parse_or_refuse(data: bytes, max_bytes: int = 4096) -> None:
    """parse() returns a Command or raises ControlError(EINVAL|E2BIG); anything else fails."""
    try:
        cmd = parse(data, max_bytes=max_bytes)
    except ControlError as exc:
        assert exc.errno in ALLOWED_ERRNOS, exc
        assert isinstance(exc.message, str) and "\n" not in exc.message
        return
    assert isinstance(cmd, Attach | Mount | Hold | Release | Set | Detach)
    # Whatever was accepted must survive being written back out.
    assert parse(format_command(cmd).encode()) == cmd


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_random_bytes_only_returns_command_or_control_error(data: bytes) -> None:
    _parse_or_refuse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=100))
def test_parse_random_bytes_with_small_limit_only_refuses_cleanly(data: bytes, limit: int) -> None:
    _parse_or_refuse(data, max_bytes=limit)


VALID_LINES = [line for line, _ in VALID]
JUNK = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [b"\n", b"\r", b"\x00", b'"', b"'", b"\\", b" ", b"=", b",", b":", b"@", b"*", b"\xff"]
    ),
    st.text(max_size=12).map(str.encode),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID_LINES), st.data())
def test_parse_valid_commands_split_and_mixed_with_junk_refuse_cleanly(
    line: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(line)))
    junk = data.draw(JUNK)
    head, tail = line[:cut], line[cut:]
    for piece in (head, tail, head + junk, junk + tail, head + junk + tail, line + junk):
        _parse_or_refuse(piece)


WORD = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
HOLDER = st.from_regex(r"[A-Za-z0-9._:-]{1,30}", fullmatch=True)
USER = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_.-]{0,10}", fullmatch=True),
    st.integers(min_value=0, max_value=2**32 - 2).map(str),
)
PATH = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc")), max_size=30
).map(lambda s: "/" + s)
GRANTS = st.lists(
    st.one_of(
        st.builds(GrantSpec, USER, st.booleans(), st.sampled_from([RO, RW])),
        st.just(GrantSpec("*", False, RO)),
    ),
    max_size=4,
    unique_by=lambda g: (g.principal, g.is_group),
).map(tuple)
EXPIRE = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-6, max_value=315360000.0),
    st.integers(min_value=1, max_value=315360000).map(float),
)
COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(
        Attach,
        WORD,
        PATH,
        st.booleans(),
        st.none() | USER,
        st.none() | GRANTS,
        st.none() | HOLDER,
        EXPIRE,
    ),
    st.builds(
        Mount,
        WORD,
        st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True),
        st.just("none") | PATH,
        st.booleans(),
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc"))),
        st.none() | USER,
        st.none() | GRANTS,
        st.none() | HOLDER,
        EXPIRE,
    ),
    st.builds(Hold, WORD, HOLDER),
    st.builds(Release, WORD, HOLDER),
    st.builds(
        Set,
        WORD,
        st.none() | st.booleans(),
        st.none() | USER,
        st.none() | GRANTS,
        st.none() | st.booleans(),
    ).filter(lambda s: (s.ro, s.owner, s.allow, s.squash_root) != (None, None, None, None)),
    st.builds(Detach, WORD, st.booleans()),
)


@settings(max_examples=500, deadline=None)
@given(COMMANDS)
def test_format_command_round_trips_through_parse(cmd: Command) -> None:
    line = format_command(cmd)
    assert "\n" not in line
    assert parse(line.encode() + b"\n") == cmd


# --- render: the one vocabulary the client and the CLI build commands with (issue 16 item 5) --


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("attach", ["d", "/srv/a b"], ["ro"], [("holder", "vm42"), ("expire", "30")]),
         Attach(name="d", source="/srv/a b", ro=True, holder="vm42", expire_s=30.0)),
        (("mount", ["s", "tmpfs", "none"], [], [("options", "size=1m")]),
         Mount(name="s", fstype="tmpfs", source="none", options="size=1m")),
        (("set", ["d"], ["rw"], [("squash", "root")]),
         Set(name="d", ro=False, squash_root=True)),
        (("detach", ["d"], ["force"], []), Detach(name="d", force=True)),
    ],
)
def test_render_builds_what_parse_reads(
    parts: tuple[str, list[str], list[str], list[tuple[str, str]]], expected: Command
) -> None:
    assert parse(render(*parts).encode()) == expected


@pytest.mark.parametrize(
    "parts",
    [
        ("attach", ["d", "/s"], [], [("squash", "root")]),  # set only
        ("set", ["d"], ["force"], []),
        ("hold", ["d"], [], []),
        ("frobnicate", ["d"], [], []),
    ],
)
def test_render_refuses_words_outside_the_grammar(
    parts: tuple[str, list[str], list[str], list[tuple[str, str]]]
) -> None:
    with pytest.raises(ValueError):
        render(*parts)
