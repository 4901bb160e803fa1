"""Serve a view: load config and state, re-attach subtrees, mount, run, shut down (SPEC 2, 8).

`serve()` builds one ViewContext and passes it down. Shutdown runs in reverse order of
acquisition from one ExitStack: the FUSE loop ends (in-flight requests finish), the view is
unmounted, every held descriptor is closed, the audit log is flushed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyfuse3
import trio

from fusemount import principals, sdnotify
from fusemount.audit import AuditLog
from fusemount.control import Controller
from fusemount.core.config import ConfigError, load_config
from fusemount.core.policy import Rules
from fusemount.core.records import Caller, Config, ControlError, Kind, State, SubtreeSpec
from fusemount.core.subtrees import SubtreeTable, same_source
from fusemount.host import sources
from fusemount.host.cpulatency import CpuLatencyRequest
from fusemount.metrics import Metrics
from fusemount.state import StateError, StateStore
from fusemount.view import errors as view_errors
from fusemount.view.busypoll import ENGAGE_COUNT, BusyPoll
from fusemount.view.context import ViewContext
from fusemount.view.handles import HandleTable
from fusemount.view.inodes import InodeTable
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import may_stall
from fusemount.view.ops import Ops

log = logging.getLogger("fusemount")

RUN_DIR = "/run/fusemount"
MNT_DETACH = 2
_ROOT = Caller(0, 0, 0)


class ServeError(Exception):
    """A reason not to serve, reported as one line."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    view: str
    config_path: str | None = None
    state_path: str = "/var/lib/fusemount/state.json"
    debug: bool = False
    demo: str | None = None
    notify_fd: int = -1  # --background: write "ready" or "error: ..." here


def pidfile_for(view: str) -> str:
    key = os.path.realpath(view).strip("/").replace("/", "_") or "root"
    return os.path.join(RUN_DIR, f"{key}.pid")


def _umount_detach(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def prepare_view(view: str) -> None:
    """VIEW must be an empty directory; a dead FUSE mount left on it is cleaned up (SPEC 2)."""
    try:
        st = os.stat(view)
        if os.path.ismount(view):
            os.listdir(view)  # a dead FUSE mount may still answer stat from the kernel's cache
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise ServeError(f"view {view}: {exc.strerror}") from None
        log.warning("view %s: dead FUSE mount (transport endpoint not connected); "
                    "unmounting it", view)
        _umount_detach(view)
        st = os.stat(view)
    if not stat.S_ISDIR(st.st_mode):
        raise ServeError(f"view {view} is not a directory")
    if os.path.ismount(view):
        raise ServeError(f"view {view} is already a mount point")
    if os.listdir(view):
        raise ServeError(f"view {view} is not empty")


def read_config(path: str | None) -> Config:
    if path is None:
        return load_config(None)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ServeError(f"config {path}: {exc.strerror}") from None
    try:
        return load_config(text)
    except ConfigError as exc:
        raise ServeError(f"config {path}: {exc}") from None


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def restore(ctx: ViewContext, specs: list[SubtreeSpec]) -> None:
    """Re-attach every subtree of the state file, running every check again (SPEC 8).

    A source whose identity changed, or that fails a check, stays listed as failed.
    """
    for spec in specs:
        try:
            opened = _reopen(ctx, spec)
        except (ControlError, OSError) as exc:
            reason = exc.message if isinstance(exc, ControlError) else str(exc)
            log.warning("subtree %s not attached: %s", spec.name, reason)
            ctx.table.add(replace(spec, state=State.FAILED, reason=reason))
            continue
        spec = replace(spec, state=State.ATTACHED, reason="")
        sid = ctx.table.add(spec)
        live = LiveSubtree(sid, spec, opened)
        live.offload = spec.kind is Kind.ATTACH and may_stall(opened.identity.fstype)
        ctx.inodes.add_root(live)
        ctx.live[spec.name] = live
        log.info("subtree %s re-attached from %s", spec.name, spec.source)


def _reopen(ctx: ViewContext, spec: SubtreeSpec) -> sources.OpenedSource:
    if spec.kind is Kind.MOUNT:
        identity = sources.mount_source_identity(spec.fstype, spec.source)
        if not same_source(spec.identity, identity):
            raise ControlError(errno.ESTALE, f"source {spec.source} was replaced "
                               "(identity changed)")
        return sources.open_mount_source(spec.fstype, spec.source, spec.options,
                                         spec.policy.ro)
    owner = Caller(spec.policy.owner, spec.policy.owner, 0)
    self_service = not ctx.rules.is_admin(owner)
    opened = sources.open_attach_source(
        spec.source, ctx.config.access, owner if self_service else _ROOT,
        self_service=self_service and ctx.config.access.self_service, ro=spec.policy.ro)
    if not same_source(spec.identity, opened.identity):
        opened.close()
        raise ControlError(errno.ESTALE, f"source {spec.source} was replaced "
                           "(identity changed)")
    return opened


def _gauges(metrics: Metrics, ctx: ViewContext) -> None:
    limits = ctx.config.limits

    def subtrees() -> list[tuple[dict[str, str], float]]:
        out = {"attached": 0.0, "failed": 0.0}
        for _, spec in ctx.table:
            out[spec.state.value] += 1
        return [({"state": k}, v) for k, v in out.items()]

    metrics.set_gauge_source("fusemount_subtrees", "Subtrees in the table by state", subtrees)
    metrics.set_gauge_source("fusemount_holders", "Holders over all subtrees", lambda: [
        ({}, float(sum(len(s.holders) for _, s in ctx.table)))])
    metrics.set_gauge_source("fusemount_open_files", "Open file and directory handles",
                             lambda: [({}, float(ctx.handles.count_data()))])
    metrics.set_gauge_source("fusemount_inodes", "Inodes the kernel knows",
                             lambda: [({}, float(len(ctx.inodes)))])
    metrics.set_gauge_source("fusemount_held_descriptors", "Descriptors held for inodes",
                             lambda: [({}, float(ctx.inodes.statistics().held_fds))])
    metrics.set_gauge_source("fusemount_process_descriptors", "Descriptors of the process",
                             lambda: [({}, float(len(os.listdir("/proc/self/fd"))))])

    def limit_rows() -> list[tuple[dict[str, str], float]]:
        return [
            ({"limit": "max_subtrees"}, float(limits.max_subtrees)),
            ({"limit": "max_subtrees_per_user"}, float(limits.max_subtrees_per_user)),
            ({"limit": "max_holders"}, float(limits.max_holders)),
            ({"limit": "max_open_files"}, float(limits.max_open_files)),
            ({"limit": "max_command_bytes"}, float(limits.max_command_bytes)),
            ({"limit": "max_cached_fds"}, float(limits.max_cached_fds)),
        ]

    def use_rows() -> list[tuple[dict[str, str], float]]:
        return [
            ({"limit": "max_subtrees"}, float(len(ctx.table))),
            ({"limit": "max_holders"},
             float(max((len(s.holders) for _, s in ctx.table), default=0))),
            ({"limit": "max_open_files"}, float(len(ctx.handles))),
            ({"limit": "max_cached_fds"}, float(ctx.inodes.statistics().cached_fds)),
        ]

    metrics.set_gauge_source(
        "fusemount_subtree_open_files", "Open files per subtree",
        lambda: [({"subtree": s.name}, float(s.open_files)) for s in ctx.live.values()])
    metrics.set_gauge_source(
        "fusemount_subtree_requests_total", "Requests that reached each subtree",
        lambda: [({"subtree": s.name}, float(s.requests)) for s in ctx.live.values()])
    metrics.set_gauge_source("fusemount_limit", "Configured limits", limit_rows)
    metrics.set_gauge_source("fusemount_limit_used", "Current use of each limit", use_rows)


@contextlib.contextmanager
def _pidfile(path: str) -> Iterator[None]:
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _notify(fd: int, message: str) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, message.encode() + b"\n")
            os.close(fd)


def serve(opts: ServeOptions) -> int:
    try:
        return _serve(opts)
    except ServeError as exc:
        print(f"fusemount: {exc}", file=sys.stderr)
        _notify(opts.notify_fd, f"error: {exc}")
        return 1


def _serve(opts: ServeOptions) -> int:
    view = os.path.abspath(opts.view)
    config = read_config(opts.config_path)
    prepare_view(view)
    # Resolved now: once the view is mounted, a path walk through it would ask this very
    # process, which is not serving requests yet.
    pidfile = pidfile_for(view)
    raise_fd_limit()
    os.umask(0)  # the kernel applied the caller's umask already; ours must not apply again
    store = StateStore(opts.state_path)
    try:
        specs = store.load()
    except StateError as exc:
        raise ServeError(str(exc)) from None
    try:
        audit = AuditLog(config.log.audit)
    except OSError as exc:
        raise ServeError(f"audit log {config.log.audit}: {exc.strerror}") from None

    rules = Rules(principals.resolve_admins(config.access.admins), config.access)
    inodes = InodeTable(config.limits.max_cached_fds, config.limits.max_inodes)
    ctx = ViewContext(config=config, rules=rules, table=SubtreeTable(config.limits),
                      inodes=inodes, handles=HandleTable(inodes, config.limits.max_open_files,
                                                             config.limits.max_open_files_per_user))
    metrics = Metrics()
    view_errors.sink.observer = metrics
    view_errors.sink.debug = opts.debug
    latency = CpuLatencyRequest()
    _gauges(metrics, ctx)
    metrics.set_gauge_source("fusemount_busy_poll",
                             "1 while idle CPUs are asked to poll ([performance] busy_poll)",
                             lambda: [({}, float(latency.held))])
    controller = Controller(ctx, store, audit, lambda verb, result: metrics.inc(
        "fusemount_control_commands_total", {"verb": verb, "result": result}))
    metrics.describe("fusemount_control_commands_total", "Control commands by verb and result")
    restore(ctx, specs)

    ops = Ops(ctx)
    ops.control.controller = controller
    ops.control.render_metrics = metrics.render
    options = set(pyfuse3.default_options)
    options |= {"fsname=fusemount", "subtype=fusemount", "allow_other", "nosuid", "nodev",
                "default_permissions"}
    if opts.debug:
        options.add("debug")
    with contextlib.ExitStack() as stack:
        stack.callback(audit.close)
        stack.callback(_close_sources, ctx)
        try:
            pyfuse3.init(ops, view, options)
        except RuntimeError as exc:
            raise ServeError(f"cannot mount {view}: {exc}") from None
        stack.callback(_unmount)
        ctx.mounted = True
        stack.enter_context(_pidfile(pidfile))
        log.info("serving %s with %d subtrees", view, len(ctx.table))
        trio.run(_run, ctx, controller, ops, opts, latency)
    log.info("stopped cleanly")
    return 0


def _unmount() -> None:
    try:
        pyfuse3.close(unmount=True)
    except Exception:
        log.exception("unmount failed")


def _close_sources(ctx: ViewContext) -> None:
    ctx.handles.close_all()
    ctx.inodes.close_all()
    for live in list(ctx.live.values()):
        live.close()
    ctx.live.clear()


async def _run(ctx: ViewContext, controller: Controller, ops: Ops,
               opts: ServeOptions, latency: CpuLatencyRequest) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals)
        nursery.start_soon(_housekeeping, ctx, controller, ops)
        if ctx.config.performance.busy_poll:
            busy = BusyPoll(latency, lambda: view_errors.sink.requests)
            view_errors.sink.on_burst = busy.on_burst
            view_errors.sink.burst_every = ENGAGE_COUNT
            nursery.start_soon(busy.run)
        if opts.demo and ctx.table.get("demo") is None:
            src = os.path.abspath(opts.demo)
            code, reply = await controller.execute(Caller(0, 0, os.getpid()),
                                                   f"attach demo {src}".encode())
            if code:
                log.warning("demo subtree not attached: %s", reply.decode().strip())
        _notify(opts.notify_fd, "ready")
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(ctx.live)} subtrees\nMAINPID={os.getpid()}")
        await pyfuse3.main(min_tasks=1, max_tasks=64)
        sdnotify.notify("STOPPING=1")
        nursery.cancel_scope.cancel()


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
        async for signum in received:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _housekeeping(ctx: ViewContext, controller: Controller, ops: Ops) -> None:
    """Once a second: autofs-style idle expiry (detach subtrees idle for their expire=
    seconds) and keeping the inode table within limits.max_inodes."""
    while True:
        await trio.sleep(1.0)
        ops.housekeeping()
        now = ctx.now()
        for live in list(ctx.live.values()):
            expire = live.spec.expire_s
            if expire > 0 and live.open_files == 0 and now - live.last_access >= expire:
                controller.expire(live.name)
        await controller.flush_pending()
