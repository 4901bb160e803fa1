"""The command-line wrappers: `fusemount attach|mount|hold|release|set|detach|ls VIEW ...`.

Each control verb sends the words after VIEW, shell-quoted again with shlex.join, as one
ctl command through fusemount.client, so what a user types is what the daemon parses:
`fusemount attach /mnt/view data /srv/data ro` is `echo 'attach data /srv/data ro' > ctl`.
Exit 0 on success, 1 with `fusemount: MESSAGE (ERRNO)` on stderr when the daemon or the
system refuses, 2 for a usage error.

Never: check, reorder or complete a command's words (the daemon is the one parser of the
ctl language), retry, or reach the daemon other than through the control files.

SPEC 9.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fusemount.client import Client, ControlFailed, MountRecord, parse_mounts

PROG = "fusemount"


@dataclass(frozen=True, slots=True)
class _Verb:
    words: str  # the ctl words after VIEW, as in SPEC 4
    summary: str
    example: str


# SPEC 4 "Commands"; the examples are meant to be pasted.
_CONTROL_VERBS: dict[str, _Verb] = {
    "attach": _Verb(
        "NAME SOURCE [ro] [owner=USER] [allow=LIST] [holder=ID] [expire=SECONDS]",
        "show the directory SOURCE as VIEW/NAME",
        "fusemount attach /mnt/view data /srv/data ro allow=alice:ro,@team:ro",
    ),
    "mount": _Verb(
        "NAME FSTYPE SOURCE [ro] [options=OPTS] [owner=USER] [allow=LIST] [holder=ID]"
        " [expire=SECONDS]",
        "mount a new FSTYPE filesystem from SOURCE (a device, an image or none) as VIEW/NAME",
        "fusemount mount /mnt/view scratch tmpfs none options=size=64m allow=@team:rw",
    ),
    "hold": _Verb(
        "NAME HOLDER",
        "add HOLDER to the holders that keep NAME attached",
        "fusemount hold /mnt/view data vol-17",
    ),
    "release": _Verb(
        "NAME HOLDER",
        "remove HOLDER; a subtree made with a holder detaches at its last release",
        "fusemount release /mnt/view data vol-17",
    ),
    "set": _Verb(
        "NAME [ro|rw] [owner=USER] [allow=LIST]",
        "change the access policy of NAME",
        "fusemount set /mnt/view data rw owner=alice allow=bob:ro,@ops:rw",
    ),
    "detach": _Verb(
        "NAME [force]",
        "remove NAME from the view (EBUSY while files are open, unless force)",
        "fusemount detach /mnt/view data force",
    ),
}
VERBS: frozenset[str] = frozenset({*_CONTROL_VERBS, "ls"})

_LS_COLUMNS = ("NAME", "STATE", "KIND", "SOURCE", "ACCESS", "HOLDERS")


def run(argv: Sequence[str], *, connect: Callable[[str], Client] = Client) -> int:
    """Run one wrapper verb; argv starts with the verb (`["attach", VIEW, ...]`).

    Returns the exit status: 0 done, 1 refused (message on stderr), 2 usage error.
    connect builds the Client for VIEW; tests pass one over a fake transport.
    """
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse's way of reporting --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    client = connect(args.view)
    try:
        if args.verb == "ls":
            _ls(client, as_json=args.json)
        else:
            reply = client.command(shlex.join([args.verb, *args.words]))
            if args.verbose:
                print(json.dumps(reply))
    except ControlFailed as exc:
        print(f"{PROG}: {_printable(exc.message)} ({exc.errno_name})", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the subtrees of a fusemount view through its control files.",
        allow_abbrev=False,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, spec in _CONTROL_VERBS.items():
        sub = verbs.add_parser(
            verb,
            help=spec.summary,
            usage=f"{PROG} {verb} [-v] VIEW {spec.words}",
            description=(
                f"{spec.summary[0].upper()}{spec.summary[1:]}.\n\n"
                f"Writes the command `{verb} WORD...` to VIEW/.fusemount/ctl.\n"
                "Options go before VIEW; every word after VIEW goes to the daemon unchanged."
            ),
            epilog=f"example:\n  {spec.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="print the JSON reply")
        sub.add_argument("view", metavar="VIEW", help="where the view is mounted")
        # REMAINDER: words such as a holder id "-x" belong to the daemon, not to argparse
        sub.add_argument(
            "words", metavar="WORD", nargs=argparse.REMAINDER, help=f"ctl words: {spec.words}"
        )
    ls = verbs.add_parser(
        "ls",
        help="list the subtrees you may see",
        description="List the subtrees you may see, from VIEW/.fusemount/mounts.json.",
        epilog=f"example:\n  {PROG} ls /mnt/view\n  {PROG} ls /mnt/view --json | jq -r '.[].name'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    ls.add_argument("view", metavar="VIEW", help="where the view is mounted")
    ls.add_argument("--json", action="store_true", help="print mounts.json as the daemon wrote it")
    return parser


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
    state = record.state if record.health == "ok" else f"{record.state}/{record.health}"
    holders = ",".join(record.holders) or "-"
    cells = (record.name, state, record.kind, record.source, record.access, holders)
    return tuple(_printable(cell) or "-" for cell in cells)


def _printable(text: str) -> str:
    # A source path may hold a newline or an escape sequence: one row, no terminal tricks.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
