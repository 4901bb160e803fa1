"""Serve a view: load config and state, re-attach subtrees, mount, run, shut down (SPEC 2, 8).

`serve()` builds one ViewContext and passes it down. Shutdown runs in reverse order of
acquisition from one ExitStack: the FUSE loop ends (in-flight requests finish), the view is
unmounted, every held descriptor is closed, the audit log is flushed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyfuse3
import trio

from fusemount.control import declared
from fusemount.control.audit import AuditLog
from fusemount.control.commands import Controller
from fusemount.control.state import StateError, StateStore
from fusemount.core.config import ConfigError, load_config
from fusemount.core.policy import Rules
from fusemount.core.records import Caller, Config
from fusemount.core.subtrees import SubtreeTable
from fusemount.daemon import sdnotify
from fusemount.daemon.busypoll import BusyPoll
from fusemount.daemon.metrics import Metrics
from fusemount.host import daemonfiles, principals, sources
from fusemount.host.cpulatency import CpuLatencyRequest
from fusemount.host.logsetup import DaemonLog
from fusemount.view import errors as view_errors
from fusemount.view.context import ViewContext
from fusemount.view.ctlfiles import ControlFiles
from fusemount.view.handles import HandleTable
from fusemount.view.inodes import InodeTable
from fusemount.view.live import LiveSubtree
from fusemount.view.offload import Offloader
from fusemount.view.ops import Ops
from fusemount.view.registry import Registry

log = logging.getLogger("fusemount")
ops_log = logging.getLogger("fusemount.ops")  # the per-request debug lines, as before

RUN_DIR = daemonfiles.RUN_DIR
MNT_DETACH = 2


class ServeError(Exception):
    """A reason not to serve, reported as one line."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    view: str
    config_path: str | None = None
    state_path: str | None = None  # None: one per view, daemonfiles.default_state_path (SPEC 8)
    debug: bool = False
    demo: str | None = None
    notify_fd: int = -1  # --background: write "ready" or "error: ..." here
    fsname: str = "fusemount"  # the mount helper form passes its SOURCE (mount(8) conventions)


def pidfile_for(view: str) -> str:
    return daemonfiles.pidfile_path(os.path.realpath(view))


def serving_pid(view: str) -> int:
    """The pid of the daemon that serves view, as the kernel's lock on its pidfile proves.

    Raises FileNotFoundError if there is no pidfile, ProcessLookupError if no process holds
    it (stale), ServeError if it names another pid than its holder or may not be trusted (a
    symlink, or writable by others): `stop` must never signal a process it merely read.
    """
    path = pidfile_for(view)
    try:
        holder = daemonfiles.holder_of(path)
    except daemonfiles.UnsafeFile as exc:
        raise ServeError(f"pidfile {exc.strerror}") from None
    if holder is None:
        raise ProcessLookupError(errno.ESRCH, f"no daemon holds the pidfile {path} (stale)")
    claimed = holder.text.split()[0] if holder.text else ""
    if claimed != str(holder.pid):
        raise ServeError(f"pidfile {path} names pid {claimed or '?'} but pid {holder.pid} "
                         "holds it: refusing to signal either")
    return holder.pid


def signal_daemon(view: str, signum: int) -> int:
    """Send signum to the daemon serving view (serving_pid's checks and errors); returns its
    pid. Through a pidfd checked against the lock again, so a pid reused in between is never
    signalled."""
    pid = serving_pid(view)
    pidfd = os.pidfd_open(pid)
    try:
        if serving_pid(view) != pid:
            raise ServeError(f"the daemon serving {view} changed while stopping it")
        signal.pidfd_send_signal(pidfd, signum)
    finally:
        os.close(pidfd)
    return pid


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


def _gauges(metrics: Metrics, ctx: ViewContext) -> None:
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
        limits = ctx.config.limits  # looked up each time: SIGHUP may have changed them
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
    """Write and lock the pidfile for the daemon's life; its lock is what `stop` trusts."""
    try:
        daemonfiles.make_dirs(os.path.dirname(path), 0o755)
        fd = daemonfiles.open_own(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ServeError(f"pidfile {path}: {exc.strerror}") from None
    try:
        if not daemonfiles.try_lock(fd):
            raise ServeError(f"pidfile {path} is held by pid {daemonfiles.lock_holder(fd)}")
        daemonfiles.write_whole(fd, f"{os.getpid()}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            if daemonfiles.lock_holder(fd) is None:  # still ours: nobody else may hold it
                os.unlink(path)
        os.close(fd)


def _notify(fd: int, message: str) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.write(fd, message.encode() + b"\n")
            os.close(fd)


def serve(opts: ServeOptions) -> int:
    """Run the daemon until it is stopped; 0 on a clean stop, 1 with a one-line reason."""
    early = _EarlySignals()  # first of all: a stop sent during start-up is not lost
    try:
        opts = _resolved(opts)
        # Nothing may pin the directory serve was started in (mount(8)'s, say).
        os.chdir("/")
        return _serve(opts, early)
    except ServeError as exc:
        print(f"fusemount: {exc}", file=sys.stderr)
        if opts.notify_fd >= 0:
            log.error("%s", exc)  # detached: stderr is /dev/null, the daemon log is not
        _notify(opts.notify_fd, f"error: {exc}")
        return 1


def _resolved(opts: ServeOptions) -> ServeOptions:
    """Every path made absolute against the starting directory, before chdir("/")
    (issue 15: a relative `state=` wrote into whatever directory mount(8) ran in)."""
    view = os.path.abspath(opts.view)
    return replace(
        opts, view=view,
        config_path=None if opts.config_path is None else os.path.abspath(opts.config_path),
        state_path=os.path.abspath(opts.state_path) if opts.state_path
        else daemonfiles.default_state_path(os.path.realpath(view)),
        demo=None if opts.demo is None else os.path.abspath(opts.demo))


class _EarlySignals:
    """SIGTERM, SIGINT and SIGHUP from the start until trio's receiver takes over (and again
    after it is gone): remembered, not fatal, so a stop sent during start-up or right after
    READY=1 still ends in a clean unmount and exit 0 (issue 15 item 4)."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        for signum in _SIGNALS:
            signal.signal(signum, self._remember)

    def _remember(self, signum: int, frame: object) -> None:
        self.pending.append(signum)


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _audit_path(config: Config, view: str, detached: bool) -> str:
    if config.log.audit or not detached:
        return config.log.audit
    return daemonfiles.default_audit_path(os.path.realpath(view))


def _open_audit(path: str) -> AuditLog:
    """The audit log at path ("" = the daemon log), opened as one of our own files."""
    try:
        if path and os.path.dirname(path) == daemonfiles.DEFAULT_LOG_DIR:
            daemonfiles.make_dirs(daemonfiles.DEFAULT_LOG_DIR, 0o750)
        return AuditLog(path, opener=lambda name: daemonfiles.open_own(
            name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise ServeError(f"audit log {path}: {exc.strerror or exc}") from None


class _Requests:
    """The view's request observer (errors.RequestObserver): every answered request is
    timed for the metrics, counted for busy_poll and, with --debug, logged."""

    def __init__(self, metrics: Metrics, busy: BusyPoll | None, debug: bool) -> None:
        self.metrics = metrics
        self.busy = busy
        self.debug = debug

    def observe(self, op: str, seconds: float, errno_: int, args: tuple[object, ...]) -> None:
        if self.busy is not None:
            self.busy.answered()
        self.metrics.observe(op, seconds, errno_)
        if self.debug:
            ops_log.debug("%s(%s) -> %s", op, view_errors.show(args),
                          errno.errorcode.get(errno_, "ok"))


@dataclass(eq=False)
class _Service:
    """What a running daemon needs to reload itself on SIGHUP (issue 15 item 3)."""

    opts: ServeOptions
    ctx: ViewContext
    registry: Registry
    controller: Controller
    ops: Ops
    daemon_log: DaemonLog
    early: _EarlySignals
    busy: BusyPoll | None  # [performance] busy_poll, read at start only

    async def reload(self) -> None:
        """Reopen log files, then apply the config file again where it can change live.
        A config that does not load is logged and the running one kept; never unmounts."""
        # systemd's reload protocol (Type=notify-reload too): RELOADING=1 ... READY=1.
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            await self._reload()
        finally:
            sdnotify.notify(f"READY=1\nSTATUS=serving {len(self.ctx.live)} subtrees")

    async def _reload(self) -> None:
        self.daemon_log.reopen()
        self.controller.audit.reopen()
        try:
            new = read_config(self.opts.config_path)
        except ServeError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.ctx.config
        detached = self.opts.notify_fd >= 0
        audit_path = _audit_path(new, self.opts.view, detached)
        try:
            if new.log != old.log:
                self.daemon_log.apply(new.log, self.opts.debug)
            audit = self.controller.audit
            if audit_path != audit.path:
                audit = _open_audit(audit_path)
        except (OSError, ServeError) as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if audit is not self.controller.audit:
            self.controller.replace_audit(audit)
        ctx = self.ctx
        # The user database may be remote (NSS): read in a worker while the view serves.
        admins = await trio.to_thread.run_sync(principals.resolve_admins, new.access.admins)
        ctx.rules = Rules(admins, new.access)
        ctx.table.limits = new.limits
        ctx.handles.set_limits(new.limits.max_open_files,
                               new.limits.max_open_files_per_user)
        ctx.inodes.max_cached_fds = new.limits.max_cached_fds
        ctx.inodes.max_inodes = new.limits.max_inodes
        self.ops.entry_timeout = new.cache.entry_timeout
        self.ops.attr_timeout = new.cache.attr_timeout
        self.ops.offloader.timeout_s = new.limits.request_timeout_s
        ctx.config = new
        if new.performance != old.performance:
            log.info("reload: [performance] changes take effect at the next start")
        await declared.reconcile(self.controller, new.subtrees)
        # Grants and admins may have changed: nothing cached may outlive them (SPEC 5).
        await self.registry.invalidate_all()
        log.info("reloaded %s", self.opts.config_path or "the built-in defaults")


def _serve(opts: ServeOptions, early: _EarlySignals) -> int:
    view = opts.view
    assert opts.state_path is not None  # _resolved() chose one
    detached = opts.notify_fd >= 0
    config = read_config(opts.config_path)
    daemon_log = DaemonLog(os.path.realpath(view), detached)
    try:
        daemon_log.apply(config.log, opts.debug)
    except OSError as exc:
        raise ServeError(f"log: {exc.strerror or exc}") from None
    prepare_view(view)
    # Resolved now: once the view is mounted, a path walk through it would ask this very
    # process, which is not serving requests yet.
    pidfile = pidfile_for(view)
    raise_fd_limit()
    os.umask(0)  # the kernel applied the caller's umask already; ours must not apply again
    store = StateStore(opts.state_path)
    try:
        # Held for the daemon's life (the descriptor is never closed): one daemon per
        # state file (SPEC 8).
        store.lock(view)
        specs = store.load()
    except StateError as exc:
        raise ServeError(str(exc)) from None
    audit = _open_audit(_audit_path(config, view, detached))

    rules = Rules(principals.resolve_admins(config.access.admins), config.access)
    inodes = InodeTable(config.limits.max_cached_fds, config.limits.max_inodes)
    try:
        # Opened before the view is mounted over it: the directory underneath, whose
        # ancestors no source may be (SPEC 4).
        guard = sources.ViewGuard.open(view)
    except OSError as exc:
        raise ServeError(f"view {view}: {exc.strerror}") from None
    ctx = ViewContext(config=config, rules=rules, table=SubtreeTable(config.limits),
                      inodes=inodes,
                      handles=HandleTable(inodes, config.limits.max_open_files,
                                          config.limits.max_open_files_per_user),
                      view_guard=guard)
    metrics = Metrics()
    latency = CpuLatencyRequest()
    busy = BusyPoll(latency) if config.performance.busy_poll else None
    requests = _Requests(metrics, busy, opts.debug)
    _gauges(metrics, ctx)
    metrics.set_process_info(view=view, config=opts.config_path, state=store.path)
    metrics.set_gauge_source("fusemount_busy_poll",
                             "1 while idle CPUs are asked to poll ([performance] busy_poll)",
                             lambda: [({}, float(latency.held))])
    registry = Registry(ctx)
    controller = Controller(ctx, registry, store, audit, lambda verb, result: metrics.inc(
        "fusemount_control_commands_total", {"verb": verb, "result": result}))
    metrics.describe("fusemount_control_commands_total", "Control commands by verb and result")
    metrics.set_gauge_source(
        "fusemount_audit_records_suppressed", "Refusal records summed up, not written (SPEC 6)",
        lambda: [({}, float(controller.audit.suppressed))])
    controller.restore(specs)

    offloader = Offloader(config.limits.request_timeout_s)
    control = ControlFiles(ctx, offloader.run, controller.execute, metrics.render)
    ops = Ops(ctx, registry, control, offloader, requests)
    options = set(pyfuse3.default_options)
    options |= {f"fsname={_fuse_option_value(opts.fsname)}", "subtype=fusemount",
                "allow_other", "nosuid", "nodev", "default_permissions"}
    if opts.debug:
        options.add("debug")
    service = _Service(opts, ctx, registry, controller, ops, daemon_log, early, busy)
    with contextlib.ExitStack() as stack:
        stack.callback(daemon_log.close)
        stack.callback(lambda: controller.audit.close())
        stack.callback(guard.close)
        stack.callback(registry.close_all)
        stack.enter_context(_pidfile(pidfile))
        try:
            pyfuse3.init(ops, view, options)
        except RuntimeError as exc:
            raise ServeError(f"cannot mount {view}: {exc}") from None
        stack.callback(_unmount)
        ctx.mounted = True
        guard.mounted()
        log.info("serving %s with %d subtrees", view, len(ctx.table))
        trio.run(_run, service)
        log.info("stopped cleanly")
    return 0


def _fuse_option_value(value: str) -> str:
    # libfuse splits -o on commas; a backslash makes the next character literal.
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _unmount() -> None:
    try:
        pyfuse3.close(unmount=True)
    except Exception:
        log.exception("unmount failed")


async def _run(service: _Service) -> None:
    ctx, controller, opts = service.ctx, service.controller, service.opts
    async with trio.open_nursery() as nursery:
        # Installed before READY=1 and before --background's parent returns (issue 15).
        await nursery.start(_signals, service)
        nursery.start_soon(_housekeeping, service)
        nursery.start_soon(_expiry, service)
        if service.busy is not None:
            nursery.start_soon(service.busy.run)
        # Read at start only, like busy_poll (reload says so).
        pyfuse3.set_spin_ns(ctx.config.performance.spin_us * 1000)
        nursery.start_soon(_fuse_main, nursery.cancel_scope)
        if opts.demo and ctx.table.get("demo") is None:
            code, reply = await controller.execute(Caller(0, 0, os.getpid()),
                                                   f"attach demo {opts.demo}".encode())
            if code:
                log.warning("demo subtree not attached: %s", reply.decode().strip())
        await declared.reconcile(controller, ctx.config.subtrees)
        log.info("ready: %d subtrees attached", len(ctx.live))
        _notify(opts.notify_fd, "ready")
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(ctx.live)} subtrees\nMAINPID={os.getpid()}")


async def _fuse_main(scope: trio.CancelScope) -> None:
    await pyfuse3.main(min_tasks=1, max_tasks=64)
    sdnotify.notify("STOPPING=1")
    scope.cancel()


async def _signals(service: _Service,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """TERM/INT stop the daemon cleanly; HUP reloads (issue 15 item 3) and never stops it."""
    with trio.open_signal_receiver(*_SIGNALS) as received:
        task_status.started()
        early, service.early.pending = service.early.pending, []
        for signum in early:  # arrived while starting up
            if await _on_signal(service, signum):
                return
        async for signum in received:
            if await _on_signal(service, signum):
                return


async def _on_signal(service: _Service, signum: int) -> bool:
    """Act on one signal; True once the daemon is stopping."""
    name = signal.Signals(signum).name
    if signum == signal.SIGHUP:
        log.info("signal %s: reloading", name)
        await service.reload()
        return False
    log.info("signal %s: stopping", name)
    pyfuse3.terminate()
    return True


async def _housekeeping(service: _Service) -> None:
    """Once a second: keep the inode table within limits.max_inodes, write the summed-up
    refusals, and drop kernel caches of subtrees changed outside a command."""
    while True:
        await trio.sleep(1.0)
        service.ops.housekeeping()
        service.controller.audit.flush_suppressed()
        await service.registry.flush()


def _idle(ctx: ViewContext, live: LiveSubtree) -> bool:
    """Still served, unused for its expire= seconds, nothing open."""
    expire = live.spec.expire_s
    return (ctx.live.get(live.name) is live and expire > 0 and live.open_files == 0
            and ctx.now() - live.last_access >= expire)


async def _expiry(service: _Service) -> None:
    """Once a second: autofs-style idle expiry (detach subtrees idle for their expire=
    seconds). A loop of its own: an expiry waits for a running command (its lock), which
    must not hold up the housekeeping."""
    ctx, controller = service.ctx, service.controller
    while True:
        await trio.sleep(1.0)
        for live in list(ctx.live.values()):
            if _idle(ctx, live):
                await controller.expire(live.name, functools.partial(_idle, ctx, live))
