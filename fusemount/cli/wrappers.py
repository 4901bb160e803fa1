"""The command-line wrappers: `fusemount attach|mount|hold|release|set|detach|ls VIEW ...`.

Each control verb sends the words after VIEW, shell-quoted again with shlex.join, as one
ctl command through fusemount.client, so what a user types is what the daemon parses:
`fusemount attach /mnt/view data /srv/data ro` is `echo 'attach data /srv/data ro' > ctl`.
Exit 0 on success, 1 with `fusemount: MESSAGE (ERRNO)` on stderr when the daemon or the
system refuses, 2 for a usage error. With --json, the reply (or the error as
`{"ok": false, "errno": ..., "message": ...}`) is printed on stdout instead.

One word is completed: a relative SOURCE of `attach` (and of `mount`, when it names an
existing file) is made absolute against the current directory, as mount(8) does, because
the daemon has no working directory of the caller's to resolve it against.

Never: check, reorder or otherwise change a command's words (the daemon is the one parser
of the ctl language), retry, or reach the daemon other than through the control files.

SPEC 9.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fusemount.client import Client, ControlFailed, MountRecord, parse_mounts
from fusemount.core import protocol

PROG = "fusemount"


@dataclass(frozen=True, slots=True)
class _Verb:
    summary: str
    example: str

    def words(self, verb: str) -> str:
        """The ctl words after VIEW, from the daemon's own grammar (SPEC 4)."""
        return protocol.usage(verb).split(" ", 1)[1]


# SPEC 4 "Commands"; the examples are meant to be pasted.
_CONTROL_VERBS: dict[str, _Verb] = {
    "attach": _Verb(
        "show the directory SOURCE as VIEW/NAME",
        "fusemount attach /mnt/view data /srv/data ro allow=alice:ro,@team:ro",
    ),
    "mount": _Verb(
        "mount a new FSTYPE filesystem from SOURCE (a device, an image or none) as VIEW/NAME",
        "fusemount mount /mnt/view scratch tmpfs none options=size=64m allow=@team:rw",
    ),
    "hold": _Verb(
        "add HOLDER to the holders that keep NAME attached",
        "fusemount hold /mnt/view data vol-17",
    ),
    "release": _Verb(
        "remove HOLDER; a subtree made with a holder detaches at its last release",
        "fusemount release /mnt/view data vol-17",
    ),
    "set": _Verb(
        "change the access policy of NAME (squash=root: root acts as nobody in it)",
        "fusemount set /mnt/view data rw owner=alice allow=bob:ro,@ops:rw squash=root",
    ),
    "detach": _Verb(
        "remove NAME from the view (EBUSY while files are open, unless force)",
        "fusemount detach /mnt/view data force",
    ),
}
VERBS: frozenset[str] = frozenset({*_CONTROL_VERBS, "ls"})

_LS_COLUMNS = ("NAME", "STATE", "KIND", "SOURCE", "ACCESS", "HOLDERS", "REASON")


def run(argv: Sequence[str], *, connect: Callable[[str], Client] = Client) -> int:
    """Run one wrapper verb; argv starts with the verb (`["attach", VIEW, ...]`).

    Returns the exit status: 0 done, 1 refused (message on stderr), 2 usage error.
    connect builds the Client for VIEW; tests pass one over a fake transport.
    """
    parser = argparse.ArgumentParser(prog=PROG, allow_abbrev=False)
    add_parsers(parser.add_subparsers(dest="verb", required=True, metavar="VERB"),
                [global_options(suppress=True)])
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse's way of reporting --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    return run_parsed(args, connect=connect)


def global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """-v/--verbose and --json, for the top-level parser and (suppress=True) every command.

    Defaults are SUPPRESS below the top level so that an option given before the command
    is not reset by the command's own parser (`fusemount --json ls V` == `ls --json V`).
    """
    parent = argparse.ArgumentParser(add_help=False)
    default: object = argparse.SUPPRESS if suppress else False
    parent.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="say more (the control verbs print the daemon's JSON reply)")
    parent.add_argument("--json", action="store_true", default=default,
                        help="machine-readable output on stdout; errors as a JSON object")
    return parent


def run_parsed(args: argparse.Namespace, *, connect: Callable[[str], Client] = Client) -> int:
    """Run the wrapper verb parsed by a parser built with add_parsers()."""
    as_json = bool(getattr(args, "json", False))
    client = connect(args.view)
    try:
        if args.verb == "ls":
            _ls(client, as_json=as_json)
        else:
            words = resolve_source(args.verb, list(args.words))
            reply = client.command(shlex.join([args.verb, *words]))
            if as_json or getattr(args, "verbose", False):
                print(json.dumps(reply))
    except ControlFailed as exc:
        report_failure(exc.errno_name, exc.message, as_json=as_json)
        return 1
    return 0


def report_failure(
    errno_name: str, message: str, *, as_json: bool, show_errno: bool = True
) -> None:
    """One line: `fusemount: MESSAGE (ERRNO)` on stderr, or a JSON error object on stdout."""
    if as_json:
        print(json.dumps({"ok": False, "errno": errno_name, "message": message}))
    else:
        suffix = f" ({errno_name})" if show_errno else ""
        print(f"{PROG}: {printable(message)}{suffix}", file=sys.stderr)


def resolve_source(verb: str, words: list[str]) -> list[str]:
    """words with a relative SOURCE made absolute (attach always; mount if it exists)."""
    index = {"attach": 1, "mount": 2}.get(verb)
    if index is None or len(words) <= index:
        return words
    source = words[index]
    if not source or source.startswith("/"):
        return words
    if verb == "mount" and not os.path.exists(source):
        return words  # `none`, or a name the filesystem itself interprets
    return [*words[:index], os.path.abspath(source), *words[index + 1 :]]


def add_parsers(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    """Add the control verbs and `ls` to a subparsers action."""
    for verb, spec in _CONTROL_VERBS.items():
        sub = verbs.add_parser(
            verb,
            help=spec.summary,
            usage=f"{PROG} {verb} [-v] [--json] VIEW {spec.words(verb)}",
            description=(
                f"{spec.summary[0].upper()}{spec.summary[1:]}.\n\n"
                f"Writes the command `{verb} WORD...` to VIEW/.fusemount/ctl.\n"
                "Options go before VIEW; every word after VIEW goes to the daemon unchanged"
                + (" (a relative SOURCE is made absolute first)." if verb in ("attach", "mount")
                   else ".")
            ),
            epilog=f"example:\n  {spec.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
            parents=parents,
        )
        sub.add_argument("view", metavar="VIEW", help="where the view is mounted")
        # REMAINDER: words such as a holder id "-x" belong to the daemon, not to argparse
        sub.add_argument(
            "words", metavar="WORD", nargs=argparse.REMAINDER, help=f"ctl words: {spec.words(verb)}"
        )
    ls = verbs.add_parser(
        "ls",
        help="list the subtrees you may see, and why any failed",
        description="List the subtrees you may see, from VIEW/.fusemount/mounts.json.\n"
        "STATE is attached or failed (with /stalled when the source stopped answering);\n"
        "REASON says why a subtree failed.",
        epilog=f"example:\n  {PROG} ls /mnt/view\n  {PROG} ls /mnt/view --json | jq -r '.[].name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        parents=parents,
    )
    ls.add_argument("view", metavar="VIEW", help="where the view is mounted")


def _ls(client: Client, *, as_json: bool) -> None:
    if as_json:
        raw = client.mounts_json()
        # Parsed only so that a broken listing is an error, not garbage with exit 0.
        parse_mounts(raw, str(client.control_dir / "mounts.json"))
        text = raw.decode("utf-8", errors="replace")
        print(text, end="" if text.endswith("\n") else "\n")
        return
    rows = [_LS_COLUMNS, *(_row(record) for record in client.mounts())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_LS_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _row(record: MountRecord) -> tuple[str, ...]:
    state = record.state if record.health in ("ok", record.state) else (
        f"{record.state}/{record.health}")
    holders = ",".join(record.holders) or "-"
    cells = (record.name, state, record.kind, record.source, record.access, holders,
             record.reason)
    return tuple(printable(cell) or "-" for cell in cells)


def printable(text: str) -> str:
    """text as one line of printable characters (escapes for the rest)."""
    # A source path may hold a newline or an escape sequence: one row, no terminal tricks.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
