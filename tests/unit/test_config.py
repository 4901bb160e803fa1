"""Configuration (SPEC 7): defaults, a full valid file, and every bad value named by key."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusemount.core.config import (
    INT_BOUNDS,
    ConfigError,
    decl_command,
    defaults_toml,
    dump_config,
    load_config,
    parse_config,
)
from fusemount.core.records import (
    AccessConfig,
    CacheConfig,
    Config,
    Limits,
    LogConfig,
    PerformanceConfig,
    SubtreeDecl,
)

FULL = """
[access]
admins = ["root", "0", "ops", "svc$", "@wheel", "@27"]
self_service = true
self_service_roots = ["/home", "/srv/users"]
source_roots = ["/srv", "/data/"]
fstypes = ["ext4", "xfs", "fuse.sshfs"]
require_mountpoint = true
mount_fstypes = ["tmpfs"]
deny_special_files = true
hide_names = true

[limits]
max_subtrees = 200
max_subtrees_per_user = 3
max_holders = 10
max_open_files = 16384
max_open_files_per_user = 100
max_command_bytes = 64
max_cached_fds = 64
request_timeout_s = 5

[cache]
entry_timeout = 0
attr_timeout = 0.25

[performance]
busy_poll = true

[log]
audit = "/var/log/fusemount/audit.jsonl"
"""


def test_parse_config_full_file_gives_expected_records() -> None:
    assert parse_config(FULL) == Config(
        access=AccessConfig(
            admins=("root", "0", "ops", "svc$", "@wheel", "@27"),
            self_service=True,
            self_service_roots=("/home", "/srv/users"),
            source_roots=("/srv", "/data/"),
            fstypes=("ext4", "xfs", "fuse.sshfs"),
            require_mountpoint=True,
            mount_fstypes=("tmpfs",),
            deny_special_files=True,
            hide_names=True,
        ),
        limits=Limits(
            max_subtrees=200,
            max_subtrees_per_user=3,
            max_holders=10,
            max_open_files=16384,
            max_open_files_per_user=100,
            max_command_bytes=64,
            max_cached_fds=64,
            request_timeout_s=5.0,
        ),
        cache=CacheConfig(entry_timeout=0.0, attr_timeout=0.25),
        performance=PerformanceConfig(busy_poll=True),
        log=LogConfig(audit="/var/log/fusemount/audit.jsonl"),
    )


def test_parse_config_int_seconds_become_floats() -> None:
    config = parse_config("[cache]\nentry_timeout = 2\n[limits]\nrequest_timeout_s = 7\n")
    assert type(config.cache.entry_timeout) is float
    assert type(config.limits.request_timeout_s) is float


def test_parse_config_empty_text_is_defaults() -> None:
    assert parse_config("") == Config()
    assert parse_config("# nothing\n[access]\n[limits]\n[cache]\n[log]\n") == Config()


def test_parse_config_partial_section_keeps_other_defaults() -> None:
    config = parse_config("[limits]\nmax_subtrees = 5\n")
    assert config == dataclasses.replace(Config(), limits=Limits(max_subtrees=5))


def test_parse_config_empty_lists_are_kept() -> None:
    config = parse_config("[access]\nadmins = []\nmount_fstypes = []\n")
    assert config.access.admins == ()
    assert config.access.mount_fstypes == ()


def test_load_config_none_is_defaults() -> None:
    assert load_config(None) == Config()
    assert load_config("[log]\naudit = '/a'\n").log.audit == "/a"


def test_defaults_toml_round_trips_to_defaults() -> None:
    text = defaults_toml()
    assert parse_config(text) == Config()
    # Every key is written out, so the file documents every knob.
    document = tomllib.loads(text)
    for section in dataclasses.fields(Config):
        if section.name == "subtrees":  # [[subtree]] tables, none by default
            assert "subtree" not in document
            continue
        record = getattr(Config(), section.name)
        assert set(document[section.name]) == {f.name for f in dataclasses.fields(record)}


def test_dump_config_round_trips_non_default_config() -> None:
    config = parse_config(FULL)
    assert parse_config(dump_config(config)) == config


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30).map(
        lambda s: "/" + s.replace("\0", "")
    ),
    st.floats(min_value=0.0, max_value=86400.0),
)
def test_dump_config_round_trips_odd_strings_and_floats(audit: str, timeout: float) -> None:
    config = Config(
        access=AccessConfig(source_roots=(audit,)),
        cache=CacheConfig(entry_timeout=timeout),
        log=LogConfig(audit=audit),
    )
    assert parse_config(dump_config(config)) == config


# (TOML text, the start of the one-line message)
BAD: list[tuple[str, str]] = [
    # structure
    ("[acess]\nadmins = []\n", "unknown section acess"),
    ("verbose = true\n", "unknown key verbose"),
    ("[limits]\nmax_foo = 1\n", "unknown key limits.max_foo"),
    ("[access]\nadmin = ['root']\n", "unknown key access.admin"),
    ("[access.extra]\nx = 1\n", "unknown key access.extra"),
    ('[log]\n"a\\nb" = 1\n', 'unknown key log."a\\u000ab"'),
    ("access = 1\n", "access: expected a table, got 1"),
    ("[[limits]]\nmax_subtrees = 1\n", "limits: expected a table"),
    # booleans
    ("[access]\nself_service = 'yes'\n", "access.self_service: expected a boolean, got 'yes'"),
    ("[access]\nself_service = 1\n", "access.self_service: expected a boolean, got 1"),
    ("[access]\nrequire_mountpoint = 0\n", "access.require_mountpoint: expected a boolean"),
    ("[access]\ndeny_special_files = 1\n", "access.deny_special_files: expected a boolean"),
    ("[performance]\nbusy_poll = 'auto'\n", "performance.busy_poll: expected a boolean"),
    # integers
    ("[limits]\nmax_subtrees = true\n", "limits.max_subtrees: expected an integer, got true"),
    ("[limits]\nmax_subtrees = 64.0\n", "limits.max_subtrees: expected an integer, got 64.0"),
    ("[limits]\nmax_subtrees = '64'\n", "limits.max_subtrees: expected an integer, got '64'"),
    ("[limits]\nmax_subtrees = 0\n", "limits.max_subtrees: expected an integer from 1"),
    ("[limits]\nmax_subtrees = -1\n", "limits.max_subtrees: expected an integer from 1"),
    ("[limits]\nmax_subtrees = 65537\n", "limits.max_subtrees: expected an integer from 1"),
    ("[limits]\nmax_subtrees_per_user = 0\n", "limits.max_subtrees_per_user: expected"),
    ("[limits]\nmax_holders = 0\n", "limits.max_holders: expected an integer from 1"),
    ("[limits]\nmax_open_files = 16385\n", "limits.max_open_files: expected an integer from 1"),
    ("[limits]\nmax_open_files = 0\n", "limits.max_open_files: expected an integer from 1"),
    ("[limits]\nmax_open_files_per_user = 0\n", "limits.max_open_files_per_user: expected an "
     "integer from 1"),
    ("[limits]\nmax_open_files_per_user = 16385\n", "limits.max_open_files_per_user: expected"),
    ("[limits]\nmax_command_bytes = 63\n", "limits.max_command_bytes: expected an integer from 64"),
    ("[limits]\nmax_command_bytes = 1048577\n", "limits.max_command_bytes: expected"),
    ("[limits]\nmax_cached_fds = 63\n", "limits.max_cached_fds: expected an integer from 64"),
    ("[limits]\nmax_cached_fds = 16385\n", "limits.max_cached_fds: expected an integer from 64"),
    ("[limits]\nmax_holders = 1e3\n", "limits.max_holders: expected an integer, got 1000.0"),
    # seconds
    ("[limits]\nrequest_timeout_s = 0\n", "limits.request_timeout_s: expected seconds > 0"),
    ("[limits]\nrequest_timeout_s = -1.5\n", "limits.request_timeout_s: expected seconds > 0"),
    ("[limits]\nrequest_timeout_s = false\n", "limits.request_timeout_s: expected a number"),
    ("[cache]\nentry_timeout = -0.1\n", "cache.entry_timeout: expected seconds >= 0"),
    ("[cache]\nentry_timeout = nan\n", "cache.entry_timeout: expected seconds >= 0"),
    ("[cache]\nattr_timeout = inf\n", "cache.attr_timeout: expected seconds >= 0"),
    ("[cache]\nattr_timeout = 86401\n", "cache.attr_timeout: expected seconds >= 0"),
    ("[cache]\nattr_timeout = '1'\n", "cache.attr_timeout: expected a number of seconds, got '1'"),
    ("[cache]\nattr_timeout = true\n", "cache.attr_timeout: expected a number of seconds"),
    # lists of words
    ("[access]\nadmins = 'root'\n", "access.admins: expected a list, got 'root'"),
    ("[access]\nadmins = ['root', 0]\n", "access.admins[1]: expected a user name, uid or @group"),
    ("[access]\nadmins = ['Root']\n", "access.admins[0]: expected a user name, uid or @group"),
    ("[access]\nadmins = ['']\n", "access.admins[0]: expected a user name"),
    ("[access]\nadmins = ['@']\n", "access.admins[0]: expected a user name"),
    ("[access]\nadmins = ['*']\n", "access.admins[0]: expected a user name"),
    ("[access]\nadmins = ['-1']\n", "access.admins[0]: expected a user name"),
    ("[access]\nsource_roots = ['srv']\n", "access.source_roots[0]: expected an absolute path"),
    ("[access]\nsource_roots = ['']\n", "access.source_roots[0]: expected an absolute path"),
    ('[access]\nsource_roots = ["/a\\u0000b"]\n', "access.source_roots[0]: expected an absolute"),
    ("[access]\nself_service_roots = [['/a']]\n", "access.self_service_roots[0]: expected"),
    ("[access]\nself_service_roots = '/home'\n", "access.self_service_roots: expected a list"),
    ("[access]\nfstypes = ['EXT4']\n", "access.fstypes[0]: expected a filesystem type"),
    ("[access]\nmount_fstypes = ['tmpfs', 'a b']\n", "access.mount_fstypes[1]: expected a file"),
    # strings
    ("[log]\naudit = 'audit.log'\n", 'log.audit: expected an absolute path or ""'),
    ("[log]\naudit = false\n", 'log.audit: expected an absolute path or "", got false'),
    # syntax
    ("[limits\n", "TOML syntax error"),
    ("[access]\nadmins = ['root'\n", "TOML syntax error"),
    ("[limits]\nmax_subtrees = 1\nmax_subtrees = 2\n", "TOML syntax error"),
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", ""),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m or t[:20] for t, m in BAD])
def test_parse_config_bad_value_is_rejected_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_parse_config_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[access]\nself_service = false\nadmins = [root]\n")
    assert "line 3" in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_every_record_field_is_validated_by_key() -> None:
    # A wrong-typed value (an inline table fits no key) must be refused for every field, so
    # a field added to records.py without a check here fails this test.
    for section in dataclasses.fields(Config):
        if section.name == "subtrees":
            continue  # [[subtree]] tables: below
        record = getattr(Config(), section.name)
        for item in dataclasses.fields(record):
            with pytest.raises(ConfigError) as info:
                parse_config(f"[{section.name}]\n{item.name} = {{}}\n")
            assert str(info.value).startswith(f"{section.name}.{item.name}: expected")
    for item in dataclasses.fields(SubtreeDecl):
        with pytest.raises(ConfigError) as info:
            base = {"name": "name = 'a'", "source": "source = '/x'"}
            base[item.name] = f"{item.name} = {{}}"
            parse_config("[[subtree]]\n" + "\n".join(base.values()) + "\n")
        assert str(info.value).startswith(f"subtree[0].{item.name}: expected")


def test_int_bounds_cover_every_integer_key_and_the_defaults() -> None:
    sections: dict[str, Limits | PerformanceConfig] = {
        "limits": Limits(), "performance": PerformanceConfig()}
    int_fields = {(name, f.name) for name, section in sections.items()
                  for f in dataclasses.fields(section) if f.type in ("int", int)}
    assert set(INT_BOUNDS) == {key for _, key in int_fields}
    for name, key in int_fields:
        low, high = INT_BOUNDS[key]
        assert low <= getattr(sections[name], key) <= high
        assert getattr(getattr(parse_config(f"[{name}]\n{key} = {low}\n"), name), key) == low
        assert getattr(getattr(parse_config(f"[{name}]\n{key} = {high}\n"), name), key) == high
        with pytest.raises(ConfigError):
            parse_config(f"[{name}]\n{key} = {high + 1}\n")


DECLARED = """
[[subtree]]
name = "data"
source = "/srv/data"
ro = true
allow = ["bob:ro", "@team:rw"]

[[subtree]]
name = "scratch"
fstype = "tmpfs"
source = "none"
options = "size=1m"
owner = 0
"""


def test_subtree_tables_parse_and_round_trip_issue_15() -> None:
    config = parse_config(DECLARED)
    assert config.subtrees == (
        SubtreeDecl(name="data", source="/srv/data", ro=True, allow=("bob:ro", "@team:rw")),
        SubtreeDecl(name="scratch", source="none", fstype="tmpfs", options="size=1m",
                    owner="0"),
    )
    assert parse_config(dump_config(config)) == config
    assert decl_command(config.subtrees[0]) == "attach data /srv/data ro owner=root " \
        "allow=bob:ro,@team:rw"
    assert decl_command(config.subtrees[1]) == "mount scratch tmpfs none options=size=1m owner=0"


@pytest.mark.parametrize(("text", "named"), [
    ('[[subtree]]\nname = "a b"\nsource = "/x"\n', "subtree[0] (a b): bad name"),
    ('[[subtree]]\nname = "a"\nsource = "x"\n', "subtree[0] (a): attach: SOURCE"),
    ('[[subtree]]\nname = "a"\nsource = "/x"\ncolour = 1\n', "unknown key subtree[0].colour"),
    ('[[subtree]]\nname = "a"\n', "subtree[0]: missing key source"),
    ('[[subtree]]\nname = "a"\nsource = "/x"\nro = "yes"\n', "subtree[0].ro"),
    ('[[subtree]]\nname = "a"\nsource = "/x"\nallow = ["*:rw"]\n', "subtree[0] (a): allow"),
    ('[[subtree]]\nname = "a"\nsource = "/x"\noptions = "size=1m"\n', "subtree[0].options"),
    ('[[subtree]]\nname = "a"\nsource = "/x"\n[[subtree]]\nname = "a"\nsource = "/y"\n',
     "subtree[1].name: a is declared twice"),
    ('[log]\nlevel = "loud"\n', "log.level"),
    ('[log]\ntarget = "journal"\n', "log.target"),
    ('[log]\nfile = "rel.log"\n', "log.file"),
    ('[log]\nsyslog_socket = ""\n', "log.syslog_socket"),
])
def test_bad_subtree_tables_and_log_keys_are_refused_naming_them_issue_15(
    text: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_config(text)
