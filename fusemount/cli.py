"""The `fusemount` command: serve, stop, config, and the control wrappers (SPEC 2, 9)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from fusemount import __version__, wrappers
from fusemount.core.config import ConfigError, defaults_toml, load_config
from fusemount.daemon import ServeError, ServeOptions, serve, signal_daemon

EPILOG_SERVE = """example:
  fusemount serve /mnt/view --state /var/lib/fusemount/state.json --background
  echo 'attach data /srv/data' > /mnt/view/.fusemount/ctl
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusemount", description="A FUSE view of managed mounts.")
    p.add_argument("--version", action="version", version=f"fusemount {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="mount VIEW and serve it",
                       epilog=EPILOG_SERVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("view")
    s.add_argument("--config", help="TOML config file (built-in defaults without it)")
    s.add_argument("--state", default=None,
                   help="state file (default: /var/lib/fusemount/VIEW.json, VIEW escaped "
                        "as by systemd-escape --path)")
    s.add_argument("--background", action="store_true",
                   help="return once the view is live; the daemon keeps running")
    s.add_argument("--debug", action="store_true", help="log every request")
    s.add_argument("--demo", metavar="DIR", help="attach DIR as subtree `demo` at start")
    s.add_argument("--notify-fd", type=int, default=-1, help=argparse.SUPPRESS)
    st = sub.add_parser("stop", help="stop the daemon serving VIEW",
                        epilog="example:\n  fusemount stop /mnt/view",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("view")
    st.add_argument("--timeout", type=float, default=30.0)
    t = sub.add_parser("top", help="live view of what the daemon is doing (admins)",
                       epilog="example:\n  fusemount top /mnt/view      # q or Ctrl-C quits",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("view")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    c = sub.add_parser("config", help="check a config file or print the defaults",
                       epilog="examples:\n  fusemount config --check /etc/fusemount.toml\n"
                              "  fusemount config --defaults",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", metavar="FILE")
    g.add_argument("--defaults", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] in wrappers.VERBS:
        return wrappers.run(args_list)
    if len(args_list) >= 2 and args_list[0] not in _SUBCOMMANDS and args_list[0][:1] != "-":
        return mount_helper(args_list)
    args = _parser().parse_args(args_list)
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "stop":
        return stop(args.view, args.timeout)
    if args.cmd == "top":
        from fusemount import top

        return top.main(args.view, args.interval)
    return _config(args)


_SUBCOMMANDS = frozenset({"serve", "stop", "config", "top", "help"})
# Options mount(8) and mount.fuse3 pass that the view always has or that mean nothing here.
_IGNORED_MOUNT_OPTIONS = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev",
    "nosuid", "nodev", "noexec", "exec", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "async", "sync", "allow_other", "default_permissions",
    # mount.fuse3 adds these for root; the view is mounted nosuid,nodev whatever they say.
    "suid", "dev",
})


def mount_helper(argv: list[str]) -> int:
    """`mount -t fuse.fusemount CONFIG VIEW -o OPTS` (via mount.fuse3): serve in the background.

    CONFIG is a config file, or `none` for the built-in defaults. Options: `state=FILE`,
    `debug`; the standard mount options are accepted and ignored (the view is always
    nosuid,nodev,allow_other,default_permissions, whatever `suid` or `dev` say).
    """
    config, view, rest = argv[0], argv[1], argv[2:]
    state: str | None = None
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
            return 2
    for opt in filter(None, words):
        key, _, value = opt.partition("=")
        if key == "state" and value:
            state = value
        elif key == "debug":
            debug = True
        elif key not in _IGNORED_MOUNT_OPTIONS:
            print(f"fusemount: unknown mount option {opt!r}", file=sys.stderr)
            return 2
    args = argparse.Namespace(view=view, state=state, debug=debug, demo=None,
                              config=None if config in ("none", "-") else config)
    return _background(args)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    if args.background:
        return _background(args)
    _setup_logging(args.debug)
    return serve(ServeOptions(view=args.view, config_path=args.config, state_path=args.state,
                              debug=args.debug, demo=args.demo, notify_fd=args.notify_fd))


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
    with open(os.devnull, "r+b") as null:
        proc = subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, pass_fds=(w,),
                                start_new_session=True)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.readline().decode(errors="replace").strip()
    if line == "ready":
        return 0
    # The daemon gave up: let it finish exiting so nothing outlives this failed command.
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reason = line.removeprefix("error: ") or f"daemon exited with {proc.returncode}"
    print(f"fusemount: {reason}", file=sys.stderr)
    return 1


def stop(view: str, timeout_s: float) -> int:
    try:
        # Only the process holding the view's pidfile lock is signalled (issue 12 item 14).
        pid = signal_daemon(view, signal.SIGTERM)
    except ServeError as exc:
        print(f"fusemount: {exc}", file=sys.stderr)
        return 1
    except OSError:
        if os.path.ismount(view):
            rc = subprocess.call(["umount", view])
            return 0 if rc == 0 else 1
        print(f"fusemount: no daemon serves {view}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return 0
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().split(b") ", 1)[1][:1] == b"Z":
                return 0
        time.sleep(0.05)
    print(f"fusemount: daemon {pid} did not stop within {timeout_s}s", file=sys.stderr)
    return 1


def _config(args: argparse.Namespace) -> int:
    if args.defaults:
        sys.stdout.write(defaults_toml())
        return 0
    try:
        with open(args.check, encoding="utf-8") as f:
            load_config(f.read())
    except OSError as exc:
        print(f"fusemount: {args.check}: {exc.strerror}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"fusemount: {args.check}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.check}: ok")
    return 0
