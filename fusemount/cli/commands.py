"""The `fusemount` command: serve, stop, status, config, top, help and the control wrappers
(SPEC 2, 9), and the mount(8) helper form `fusemount SOURCE VIEW -o OPTS`.

Every command is listed by `fusemount --help` and explained by `fusemount help CMD`. The
global options -v/--verbose and --json may come before or right after the command word;
with --json a failure prints one JSON object `{"ok": false, "errno": ..., "message": ...}`
on stdout. A first word that is no command is the mount(8) helper form only when it looks
like what mount.fuse3 passes (a path or `none`); anything else is "unknown command", with
the nearest command suggested.

Exit status (EXIT_CODES_TEXT): 0 success, 1 failure, 2 usage error; the mount helper form
answers as mount(8) helpers do (0, 1 incorrect invocation, 32 mount failure).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import NoReturn, cast

from fusemount import __version__
from fusemount.cli import wrappers
from fusemount.client import (
    Client,
    ControlFailed,
    MountRecord,
    is_view_mount,
    view_mount_id,
    view_problem,
)
from fusemount.core.config import ConfigError, defaults_toml, load_config

# fusemount.daemon (pyfuse3, trio) is imported by the commands that need it only: the
# wrappers, status and help start faster and run where pyfuse3 is not importable.

PROG = "fusemount"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
# mount(8) "RETURN CODES", for the helper form that mount(8) and fstab run.
MOUNT_EXIT_USAGE = 1
MOUNT_EXIT_FAILURE = 32

# Lines of at most 70 characters: the man page shows them as they are.
EXIT_CODES_TEXT = """exit status:
  0   success
  1   failure: the daemon or the system refused; the message is on
      stderr, or a JSON object on stdout with --json (also `stop` on a
      busy view without --force)
  2   usage error: unknown command, missing or unknown option

mount helper form, run by mount(8) and /etc/fstab through mount.fuse3:
  fusemount SOURCE VIEW [-o state=FILE,debug,...]
  SOURCE is a config file or `none` (built-in defaults). It is the
  source the mount table shows, so `mount -a` sees the view mounted.
  Exit status as for every mount(8) helper:
  0   mounted
  1   incorrect invocation (unknown option, missing argument)
  32  mount failure (the reason on stderr)
"""

EPILOG_SERVE = """example:
  fusemount serve /mnt/view --state /var/lib/fusemount/view.json --background
  echo 'attach data /srv/data' > /mnt/view/.fusemount/ctl
"""

# The order of `fusemount --help`: running a view first, then using it.
COMMANDS: tuple[str, ...] = (
    "serve", "stop", "status", "ls", "attach", "mount", "hold", "release", "set", "detach",
    "top", "config", "help",
)


class UsageError(Exception):
    """An argparse usage error, raised instead of printing and exiting (see _Parser)."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    # Raising lets main() print the error as JSON with --json, and return instead of exit.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; also what `make install` makes the man page and the shell
    completions from (argparse-manpage, shtab)."""
    top = _Parser(
        prog=PROG,
        description="A FUSE view of managed mounts: serve a view, then attach, mount and "
        "manage its subtrees through VIEW/.fusemount/ctl.",
        epilog=EXIT_CODES_TEXT + "\n`fusemount help COMMAND` shows the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[wrappers.global_options(suppress=False)],
        allow_abbrev=False,
    )
    top.add_argument("--version", action="version", version=f"fusemount {__version__}")
    # Subparsers are made with type(top), so _Parser too: their usage errors raise as well.
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]", top.add_subparsers(
        dest="cmd", required=True, metavar="COMMAND", title="commands"))
    common = [wrappers.global_options(suppress=True)]

    def add(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                              epilog=epilog, parents=common, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    s = add("serve", "mount VIEW and serve it (foreground unless --background)", EPILOG_SERVE)
    s.add_argument("view", metavar="VIEW", help="an empty directory to mount the view on")
    s.add_argument("--config", metavar="FILE",
                   help="TOML config file (built-in defaults without it)")
    s.add_argument("--state", metavar="FILE", default=None,
                   help="state file (default: /var/lib/fusemount/VIEW.json, VIEW escaped "
                        "as by systemd-escape --path)")
    s.add_argument("--background", action="store_true",
                   help="return once the view is live; the daemon keeps running")
    s.add_argument("--debug", action="store_true", help="log every request")
    s.add_argument("--demo", metavar="DIR", help="attach DIR as subtree `demo` at start")
    s.add_argument("--fsname", default="fusemount", help=argparse.SUPPRESS)
    s.add_argument("--notify-fd", type=int, default=-1, help=argparse.SUPPRESS)

    st = add("stop", "stop the daemon serving VIEW and unmount it (refused while busy)",
             "examples:\n  fusemount stop /mnt/view\n  fusemount stop --force /mnt/view"
             "   # even with files open under it (unmounted lazily)")
    st.add_argument("view", metavar="VIEW", help="where the view is mounted")
    st.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                    help="how long to wait for the daemon to exit (default: %(default)s)")
    st.add_argument("--force", action="store_true",
                    help="stop even while processes have files or directories open under VIEW")

    ss = add("status", "show the daemon serving VIEW and the health of every subtree",
             "examples:\n  fusemount status /mnt/view\n  fusemount status --json /mnt/view")
    ss.add_argument("view", metavar="VIEW", help="where the view is mounted")

    wrappers.add_parsers(sub, common)

    t = add("top", "live view of what the daemon is doing (admins)",
            "example:\n  fusemount top /mnt/view      # q or Ctrl-C quits")
    t.add_argument("view", metavar="VIEW", help="where the view is mounted")
    t.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes")

    c = add("config", "check a config file or print the defaults",
            "examples:\n  fusemount config --check /etc/fusemount/view.toml\n"
            "  fusemount config --defaults")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", metavar="FILE", help="parse FILE and report the first problem")
    g.add_argument("--defaults", action="store_true", help="print every key with its default")

    h = add("help", "show the help of fusemount or of one command",
            "examples:\n  fusemount help\n  fusemount help attach")
    h.add_argument("command", metavar="COMMAND", nargs="?", help="a command")
    # argparse lists subcommands in the order they were added; keep COMMANDS' order.
    order = {name: i for i, name in enumerate(COMMANDS)}
    choices = sub._choices_actions
    choices.sort(key=lambda action: order.get(action.dest, len(order)))
    return top


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list[: _command_index(args_list) + 1]
    command = _command_word(args_list)
    if command is not None and command not in COMMANDS:
        if args_list[0] == command and looks_like_mount_helper(args_list):
            return mount_helper(args_list)
        if args_list == [command] and looks_like_mount_helper([command, "VIEW"]):
            print("fusemount: the mount helper form is `fusemount SOURCE VIEW [-o OPTIONS]`",
                  file=sys.stderr)
            return MOUNT_EXIT_USAGE
        return _unknown(command, as_json="--json" in args_list)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        return _usage_error(exc, as_json=as_json or "--json" in args_list)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    as_json = bool(args.json)
    if args.cmd == "help":
        return _help(parser, args.command, as_json=as_json)
    if args.cmd in wrappers.VERBS:
        args.verb = args.cmd
        return wrappers.run_parsed(args)
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "stop":
        return stop(args.view, args.timeout, force=args.force, as_json=as_json)
    if args.cmd == "status":
        return status(args.view, as_json=as_json)
    if args.cmd == "top":
        problem = view_problem(args.view)
        if problem is not None:
            return _fail(problem, _problem_errno(problem), as_json=as_json)
        from fusemount.cli import top

        return top.main(args.view, args.interval)
    return _config(args, as_json=as_json)


# Options that may come before the command word, and take no value.
_GLOBAL_FLAGS = frozenset({"-v", "--verbose", "--json"})


def _command_index(argv: list[str]) -> int:
    """Index of the command word: the first word that is not a global flag (len if none)."""
    for index, word in enumerate(argv):
        if word not in _GLOBAL_FLAGS:
            return index
    return len(argv)


def _command_word(argv: list[str]) -> str | None:
    index = _command_index(argv)
    if index == len(argv) or argv[index].startswith("-"):
        return None  # nothing, or --help/--version/a bad option: argparse says which
    return argv[index]


def looks_like_mount_helper(argv: list[str]) -> bool:
    """True for what mount.fuse3 runs: `fusemount SOURCE VIEW [-o OPTS]`.

    SOURCE is `none`, `-` or a path (it has a slash): a mistyped command has neither, and
    gets "unknown command" instead of being served as a config file name.
    """
    source = argv[0]
    return len(argv) >= 2 and (source in ("none", "-") or "/" in source)


def _unknown(command: str, *, as_json: bool) -> int:
    close = difflib.get_close_matches(command, COMMANDS, n=1, cutoff=0.6)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    message = (f"unknown command {command!r}{hint}; `fusemount help` lists the commands")
    return _fail(message, "EINVAL", as_json=as_json, code=EXIT_USAGE)


def _usage_error(exc: UsageError, *, as_json: bool) -> int:
    if as_json:
        wrappers.report_failure("EINVAL", f"{exc.parser.prog}: {exc}", as_json=True)
    else:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _help(parser: argparse.ArgumentParser, command: str | None, *, as_json: bool) -> int:
    if command is None:
        parser.print_help()
        return EXIT_OK
    if command not in COMMANDS:
        return _unknown(command, as_json=as_json)
    with contextlib.suppress(SystemExit):
        parser.parse_args([command, "--help"])
    return EXIT_OK


def _problem_errno(problem: str) -> str:
    return "ENOTCONN" if "not connected" in problem else "ENOENT"


def _fail(message: str, errno_name: str, *, as_json: bool, code: int = EXIT_FAILURE,
          show_errno: bool = False) -> int:
    wrappers.report_failure(errno_name, message, as_json=as_json, show_errno=show_errno)
    return code


# Options mount(8) and mount.fuse3 pass that the view always has or that mean nothing here.
_IGNORED_MOUNT_OPTIONS = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
    "nosuid", "nodev", "noexec", "exec", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "async", "sync", "allow_other", "default_permissions",
    # mount.fuse3 adds these for root; the view is mounted nosuid,nodev whatever they say.
    "suid", "dev",
})


def mount_helper(argv: list[str]) -> int:
    """`mount -t fuse.fusemount SOURCE VIEW -o OPTS` (via mount.fuse3): serve in the background.

    SOURCE is a config file, or `none` for the built-in defaults; it becomes the view's
    fsname, so the mount table shows what fstab says and `mount -a` sees the view mounted.
    Options: `state=FILE`, `debug`; the standard mount options are accepted and ignored
    (the view is always nosuid,nodev,allow_other,default_permissions, whatever `suid` or
    `dev` say). Exit status as mount(8) helpers: 0, 1 incorrect invocation, 32 failure.
    """
    source, view, rest = argv[0], argv[1], argv[2:]
    state: str | None = None  # the daemon's default
    debug = False
    words: list[str] = []
    while rest:
        word = rest.pop(0)
        if word == "-o" and rest:
            words += rest.pop(0).split(",")
        elif word.startswith("-o") and len(word) > 2:
            words += word[2:].split(",")
        else:
            print(f"fusemount: unexpected argument {word!r}", file=sys.stderr)
            return MOUNT_EXIT_USAGE
    for opt in filter(None, words):
        key, _, value = opt.partition("=")
        if key == "state" and value:
            state = value
        elif key == "debug":
            debug = True
        elif key not in _IGNORED_MOUNT_OPTIONS:
            print(f"fusemount: unknown mount option {opt!r}", file=sys.stderr)
            return MOUNT_EXIT_USAGE
    args = argparse.Namespace(view=view, state=state, debug=debug, demo=None, fsname=source,
                              config=None if source in ("none", "-") else source, json=False)
    rc = _background(args)
    return MOUNT_EXIT_FAILURE if rc else EXIT_OK


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    if args.background:
        return _background(args)
    from fusemount.daemon.serve import ServeOptions, serve

    _setup_logging(args.debug)
    # No --state: ServeOptions' default, which the daemon owns (SPEC 8: one per view).
    state = {"state_path": args.state} if args.state else {}
    return serve(ServeOptions(view=args.view, config_path=args.config, debug=args.debug,
                              demo=args.demo, notify_fd=args.notify_fd, fsname=args.fsname,
                              **state))


def _background(args: argparse.Namespace) -> int:
    """Start the daemon detached; exit 0 once the view is live, else 1 with the reason."""
    r, w = os.pipe()
    argv = [sys.executable, "-m", "fusemount", "serve", args.view, "--notify-fd", str(w)]
    if args.state:
        argv += ["--state", args.state]
    if args.config:
        argv += ["--config", args.config]
    if args.debug:
        argv.append("--debug")
    if args.demo:
        argv += ["--demo", args.demo]
    if args.fsname != "fusemount":
        argv += ["--fsname", args.fsname]
    with open(os.devnull, "r+b") as null:
        proc = subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, pass_fds=(w,),
                                start_new_session=True)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.readline().decode(errors="replace").strip()
    if line == "ready":
        return EXIT_OK
    # The daemon gave up: let it finish exiting so nothing outlives this failed command.
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reason = line.removeprefix("error: ") or f"daemon exited with {proc.returncode}"
    return _fail(reason, "EIO", as_json=bool(args.json))


def stop(view: str, timeout_s: float, *, force: bool = False, as_json: bool = False) -> int:
    """Stop the daemon serving view; refused like umount(8) (EBUSY) while view is in use."""
    if not is_view_mount(view):
        problem = view_problem(view) or f"{view}: not a fusemount view"
        return _fail(problem, _problem_errno(problem), as_json=as_json)
    if not force:
        users = processes_using(view)
        if users:
            shown = ", ".join(f"{pid} ({name})" for pid, name in users[:5])
            more = f" and {len(users) - 5} more" if len(users) > 5 else ""
            return _fail(f"{view}: target is busy: in use by {shown}{more}; "
                         "close them or use --force", "EBUSY", as_json=as_json,
                         show_errno=True)
    from fusemount.daemon.serve import ServeError, signal_daemon

    try:
        # Only the process holding the view's pidfile lock is signalled (issue 12 item 14).
        pid = signal_daemon(view, signal.SIGTERM)
    except ServeError as exc:
        return _fail(str(exc), "EPERM", as_json=as_json)
    except OSError:
        if os.path.ismount(view):
            rc = subprocess.call(["umount", view])
            return EXIT_OK if rc == 0 else EXIT_FAILURE
        return _fail(f"no daemon serves {view}", "ESRCH", as_json=as_json)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return _stopped(pid, as_json)
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().split(b") ", 1)[1][:1] == b"Z":
                return _stopped(pid, as_json)
        time.sleep(0.05)
    return _fail(f"daemon {pid} did not stop within {timeout_s}s", "ETIMEDOUT", as_json=as_json)


def _stopped(pid: int, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": True, "pid": pid}))
    return EXIT_OK


def processes_using(view: str) -> list[tuple[int, str]]:
    """(pid, command name) of every process with a cwd, root, open file or mapped file
    under view: what makes umount(8) say "target is busy". Reads /proc only, like fuser -m,
    and never touches the view (a hung daemon must not hang `stop`)."""
    top = os.path.abspath(view).rstrip("/") or "/"
    prefix = top + "/"
    me = os.getpid()

    view_mnt = view_mount_id(top)

    def under(target: str) -> bool:
        target = target.removesuffix(" (deleted)")
        return target == top or target.startswith(prefix)

    def fd_under(base: str, fd: str, target: str) -> bool:
        # A path names where a file was found, not which mount holds it: the daemon's own
        # descriptor of the directory *under* its view (the guard of SPEC 4) reads as the
        # view's path too. The mount id in fdinfo tells them apart.
        if not under(target):
            return False
        with contextlib.suppress(OSError, ValueError), open(f"{base}/fdinfo/{fd}",
                                                             encoding="ascii") as f:
            for line in f:
                if line.startswith("mnt_id:") and view_mnt is not None:
                    return int(line.split()[1]) == view_mnt
        return True

    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        links: list[str] = []
        for name in ("cwd", "root"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"{base}/{name}"))
        busy = False
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"{base}/fd"):
                with contextlib.suppress(OSError):
                    busy = busy or fd_under(base, fd, os.readlink(f"{base}/fd/{fd}"))
        with contextlib.suppress(OSError), open(f"{base}/maps", encoding="utf-8",
                                                errors="surrogateescape") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) == 6:
                    links.append(fields[5].rstrip("\n"))
        if busy or any(under(link) for link in links):
            name = "?"
            with contextlib.suppress(OSError), open(f"{base}/comm", encoding="utf-8") as f:
                name = f.read().strip()
            found.append((int(entry), name))
    return found


def status(view: str, *, as_json: bool = False) -> int:
    """`fusemount status VIEW`: the daemon (admins: pid, uptime, config and state paths,
    from the metrics file) and every subtree the caller may see, with health and reason."""
    client = Client(view)
    try:
        records = client.mounts()
        version = client.version()
    except ControlFailed as exc:
        return _fail(exc.message, exc.errno_name, as_json=as_json, show_errno=True)
    daemon: dict[str, object] = {}
    try:
        daemon = _daemon_info(client)
    except ControlFailed as exc:
        # metrics is for admins: everyone else still gets the subtrees.
        daemon = {"unavailable": exc.message}
    if as_json:
        print(json.dumps({
            "ok": True, "view": os.path.abspath(view), "version": version, "daemon": daemon,
            "subtrees": [_status_record(r) for r in records],
        }))
        return EXIT_OK
    print(f"view:     {os.path.abspath(view)} (fusemount {version})")
    if "unavailable" in daemon:
        print(f"daemon:   details for admins only ({daemon['unavailable']})")
    else:
        started = daemon.get("started")
        since = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
                 if isinstance(started, float) else "?")
        print(f"daemon:   pid {daemon.get('pid', '?')}, up {_duration(daemon.get('uptime'))}"
              f" (since {since})")
        print(f"config:   {daemon.get('config') or '(built-in defaults)'}")
        print(f"state:    {daemon.get('state') or '?'}")
    failed = sum(1 for r in records if r.state != "attached")
    stalled = sum(1 for r in records if r.health == "stalled")
    print(f"subtrees: {len(records)} ({len(records) - failed} attached, {failed} failed, "
          f"{stalled} stalled)")
    for r in records:
        line = f"  {r.name}: {r.state}, health {r.health}, {r.kind} {r.source}"
        if r.open_files:
            line += f", {r.open_files} open files"
        if r.reason:
            line += f": {r.reason}"
        print(wrappers.printable(line))
    return EXIT_OK


def _status_record(r: MountRecord) -> dict[str, object]:
    return {"name": r.name, "state": r.state, "health": r.health, "reason": r.reason,
            "kind": r.kind, "source": r.source, "open_files": r.open_files}


def _daemon_info(client: Client) -> dict[str, object]:
    """pid, start time, uptime, config and state paths from the metrics file (admins only)."""
    from fusemount.cli import top

    sample = top.parse_metrics(client.metrics_text())
    info: dict[str, object] = {}
    for labels in sample.family("fusemount_info"):
        found = dict(labels)
        pid = found.get("pid", "")
        info.update(pid=int(pid) if pid.isdigit() else None, config=found.get("config", ""),
                    state=found.get("state", ""))
    started = sample.value("fusemount_start_time_seconds")
    if started is not None:
        info["started"] = started
        info["uptime"] = max(0.0, time.time() - started)
    return info


def _duration(seconds: object) -> str:
    if not isinstance(seconds, float):
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {s:02d}s"


def _config(args: argparse.Namespace, *, as_json: bool) -> int:
    if args.defaults:
        sys.stdout.write(defaults_toml())
        return EXIT_OK
    try:
        with open(args.check, encoding="utf-8") as f:
            load_config(f.read())
    except OSError as exc:
        return _fail(f"{args.check}: {exc.strerror}",
                     errno.errorcode.get(exc.errno or errno.EIO, "EIO"), as_json=as_json)
    except ConfigError as exc:
        return _fail(f"{args.check}: {exc}", "EINVAL", as_json=as_json)
    if as_json:
        print(json.dumps({"ok": True, "config": args.check}))
    else:
        print(f"{args.check}: ok")
    return EXIT_OK
