"""Control commands end to end: parse, decide, act, persist, audit, reply (SPEC 4, 5, 8).

Order for every state change: check everything (policy, table caps, source), act on the
sources, write the state file durably, then commit to the table, publish in the view and
reply. If the state file cannot be written the table is untouched and the command fails:
nothing acknowledged is ever lost, nothing refused ever changes anything.

Commands run one at a time under a trio lock (issue 16 item 3), so a command's checks still
hold at its commit although it awaits in between: opening a source (a hung network or FUSE
path must not freeze the view), saving the state file (two fsyncs) and user-database
look-ups (NSS may be remote) run in worker threads while the view keeps answering.
Idle expiry runs as a command does: under the lock, saving in a worker.

Control never touches the view's objects: it decides by a Context and publishes through a
Publisher (control/publisher.py), both passed in by the daemon.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from fusemount.control.audit import AuditLog
from fusemount.control.publisher import Context, Publisher
from fusemount.control.state import StateError, StateStore
from fusemount.core import protocol
from fusemount.core.protocol import Attach, Command, Detach, Hold, Mount, Release, Set
from fusemount.core.records import (
    Access,
    Caller,
    ControlError,
    GrantSpec,
    Identity,
    Kind,
    Policy,
    State,
    SubtreeSpec,
)
from fusemount.core.subtrees import same_source, with_holder, without_holder
from fusemount.host import principals, sources
from fusemount.host.sources import OpenedSource

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_ROOT = Caller(0, 0, 0)


async def _in_thread(call: Callable[[], _T]) -> _T:
    """call in a worker thread. A hung source path must not keep the daemon from stopping,
    so the wait is abandoned on cancellation (the call's result, a descriptor at worst, is
    dropped as the process ends)."""
    return await trio.to_thread.run_sync(call, abandon_on_cancel=True)


class Controller:
    def __init__(self, ctx: Context, view: Publisher, state: StateStore, audit: AuditLog,
                 count: Callable[[str, str], None] = lambda verb, result: None) -> None:
        self.ctx = ctx
        self.view = view
        self.state = state
        self.audit = audit
        self.count = count
        self._lock = trio.Lock()  # one command at a time: checks hold until their commit

    def replace_audit(self, audit: AuditLog) -> None:
        """SIGHUP moved the audit log: close the old one, write to audit from now on."""
        self.audit.close()
        self.audit = audit

    # --- entry point ----------------------------------------------------------------------

    async def execute(self, opener: Caller, data: bytes) -> tuple[int, bytes]:
        """Run one ctl write. Returns (0 or errno, reply line). Never raises ControlError."""
        async with self._lock:
            return await self._execute(opener, data)

    async def _execute(self, opener: Caller, data: bytes) -> tuple[int, bytes]:
        caller = self.ctx.with_groups(opener)
        text = data.decode("utf-8", "backslashreplace").rstrip("\n")
        verb = "?"
        try:
            command = protocol.parse(data, self.ctx.config.limits.max_command_bytes)
            verb = protocol.verb_of(command)
            fields, changes = await self._dispatch(caller, command)
        except ControlError as exc:
            code = exc.errno or errno.EIO
            self._record(caller, text, verb, code, exc.message, None)
            return code, protocol.render_error(code, exc.message)
        self._record(caller, text, verb, 0, "", changes)
        await self.view.flush()
        return 0, protocol.render_ok(**fields)

    def _record(self, caller: Caller, text: str, verb: str, code: int, message: str,
                changes: dict[str, object] | None) -> None:
        name = errno.errorcode.get(code, str(code)) if code else None
        # Admins' refusals are never throttled: only others can flood the log (SPEC 6).
        throttle = bool(code) and not self._is_admin(caller)
        written = self.audit.record(uid=caller.uid, gid=caller.gid, pid=caller.pid,
                                    command=text, ok=not code, errno_name=name, message=message,
                                    changes=changes, throttle=throttle)
        self.count(verb, name or "ok")
        if code and written:
            log.info("ctl uid=%d %r -> %s %s", caller.uid, text[:200], name, message[:200])

    async def _dispatch(self, caller: Caller,
                        command: Command) -> tuple[dict[str, object], dict[str, object]]:
        if isinstance(command, Attach):
            return await self._attach(caller, command)
        if isinstance(command, Mount):
            return await self._mount(caller, command)
        if isinstance(command, Hold):
            return await self._hold(caller, command)
        if isinstance(command, Release):
            return await self._release(caller, command)
        if isinstance(command, Set):
            return await self._set(caller, command)
        return await self._detach(caller, command)

    # --- helpers ----------------------------------------------------------------------------

    def _is_admin(self, caller: Caller) -> bool:
        return self.ctx.rules.is_admin(caller)

    async def _save(self, specs: Sequence[SubtreeSpec]) -> None:
        """Write specs (the table as it will be after the change) in a worker thread. Not
        abandoned on cancellation: a save once begun ends before the command does."""
        try:
            await trio.to_thread.run_sync(self.state.save, specs)
        except (StateError, OSError) as exc:
            raise _not_written(exc) from None

    def _specs_replacing(self, new: SubtreeSpec) -> list[SubtreeSpec]:
        return [new if spec.name == new.name else spec for spec in self.ctx.table.specs()]

    def _specs_without(self, name: str) -> list[SubtreeSpec]:
        return [spec for spec in self.ctx.table.specs() if spec.name != name]

    def _own_or_hidden(self, caller: Caller, spec: SubtreeSpec, what: str) -> None:
        """Non-admins may act only on subtrees they own; ones they cannot see look missing."""
        if self._is_admin(caller) or spec.policy.owner == caller.uid:
            return
        if self.ctx.access(caller, spec) is Access.NONE:
            raise ControlError(errno.ENOENT, f"no such subtree: {spec.name}")
        raise ControlError(errno.EACCES, f"{what}: {spec.name} is not yours")

    async def _policy(self, caller: Caller, owner: str | None,
                      allow: tuple[GrantSpec, ...] | None, ro: bool) -> Policy:
        owner_uid = caller.uid if owner is None else await _in_thread(
            lambda: principals.uid_of(owner))
        if owner_uid != caller.uid and not self._is_admin(caller):
            raise ControlError(errno.EACCES, "only admins may give a subtree to another owner")
        grants = await _in_thread(lambda: principals.grants_of(allow)) if allow else ()
        return Policy(owner=owner_uid, grants=grants, ro=ro)

    def _reply_fields(self, spec: SubtreeSpec, opened: OpenedSource | None) -> dict[str, object]:
        ident = opened.identity if opened is not None else spec.identity
        fields: dict[str, object] = {"name": spec.name}
        if ident is not None:
            fields.update(dev=ident.dev, ino=ident.ino, mount_id=ident.mount_id,
                          fstype=ident.fstype or spec.fstype)
        if spec.holders:
            fields["holders"] = list(spec.holders)
        return fields

    async def _existing(self, caller: Caller, name: str, identity: Identity | None,
                        holder: str | None, policy: Policy, options: str = "",
                        ) -> tuple[dict[str, object], dict[str, object]] | None:
        """attach/mount on a taken name: the same source with the same options adds the holder
        (or is a no-op); another source, or other options, is EEXIST (SPEC 4)."""
        found = self.ctx.table.get(name)
        if found is None:
            return None
        _, spec = found
        if spec.state is State.FAILED:
            return None  # re-attaching a failed subtree replaces it (SPEC 8)
        if not same_source(spec.identity, identity):
            raise ControlError(errno.EEXIST, f"name {name} is taken by another source")
        _require_same_options(spec, policy, options)
        if holder is None or holder in spec.holders:
            return self._reply_fields(spec, None), {}
        self._own_or_hidden(caller, spec, "hold")
        self.ctx.table.check_holder_room(spec, holder)
        await self._change(spec, with_holder(spec, holder))
        return self._reply_fields(self.ctx.table.require(name)[1], None), {"holder_added": holder}

    async def _commit_new(self, spec: SubtreeSpec, opened: OpenedSource) -> None:
        try:
            # A failed entry being re-attached is replaced, the new entry coming last.
            await self._save([*self._specs_without(spec.name), spec])
        except ControlError:
            opened.close()
            raise
        self._publish_new(spec, opened)

    def _publish_new(self, spec: SubtreeSpec, opened: OpenedSource) -> None:
        """Commit a new subtree to the table and serve it (a command's or a restart's)."""
        table = self.ctx.table
        if table.get(spec.name) is not None:
            table.remove(spec.name)
        self.view.publish(table.add(spec), spec, opened)

    def _room(self, caller: Caller, name: str, owner: int) -> None:
        found = self.ctx.table.get(name)
        if found is not None and found[1].state is State.FAILED:
            self._own_or_hidden(caller, found[1], "attach")
            return  # replacing a failed entry takes no new room
        self.ctx.table.check_room(owner, per_user_cap_applies=not self._is_admin(caller))

    # --- commands -----------------------------------------------------------------------------

    async def _attach(self, caller: Caller,
                      cmd: Attach) -> tuple[dict[str, object], dict[str, object]]:
        is_admin = self._is_admin(caller)
        self.ctx.rules.require_self_service(caller, "attach")
        policy = await self._policy(caller, cmd.owner, cmd.allow, cmd.ro)
        access_cfg = self.ctx.config.access
        existing = self.ctx.table.get(cmd.name)
        if existing is None or existing[1].state is State.FAILED:
            self._room(caller, cmd.name, policy.owner)
        guard = self.ctx.view_guard
        opened = await _in_thread(lambda: sources.open_attach_source(
            cmd.source, access_cfg, caller, self_service=not is_admin, ro=cmd.ro, guard=guard))
        try:
            result = await self._existing(caller, cmd.name, opened.identity, cmd.holder, policy)
        except BaseException:
            opened.close()
            raise
        if result is not None:
            opened.close()
            return result
        spec = SubtreeSpec(
            name=cmd.name, kind=Kind.ATTACH, source=cmd.source, identity=opened.identity,
            policy=policy, holders=(cmd.holder,) if cmd.holder else (),
            created_with_holder=cmd.holder is not None, expire_s=cmd.expire_s,
        )
        await self._commit_new(spec, opened)
        return self._reply_fields(spec, opened), {"attached": cmd.name, "source": cmd.source}

    async def _mount(self, caller: Caller,
                     cmd: Mount) -> tuple[dict[str, object], dict[str, object]]:
        self.ctx.rules.require_admin(caller, "mount", errno.EPERM)
        if cmd.fstype not in self.ctx.config.access.mount_fstypes:
            raise ControlError(errno.EPERM, f"filesystem type {cmd.fstype} is not in "
                               "access.mount_fstypes")
        policy = await self._policy(caller, cmd.owner, cmd.allow, cmd.ro)
        roots = self.ctx.config.access.source_roots
        guard = self.ctx.view_guard
        identity = await _in_thread(lambda: sources.mount_source_identity(
            cmd.fstype, cmd.source, caller, roots, guard))
        existing = self.ctx.table.get(cmd.name)
        if existing is not None and existing[1].state is not State.FAILED:
            if existing[1].kind is not Kind.MOUNT or existing[1].fstype != cmd.fstype:
                raise ControlError(errno.EEXIST, f"name {cmd.name} is taken by another source")
            result = await self._existing(caller, cmd.name, identity, cmd.holder, policy,
                                          cmd.options)
            assert result is not None
            return result
        self._room(caller, cmd.name, policy.owner)
        opened = await _in_thread(lambda: sources.open_mount_source(
            cmd.fstype, cmd.source, cmd.options, cmd.ro, caller, roots, guard))
        spec = SubtreeSpec(
            name=cmd.name, kind=Kind.MOUNT, source=cmd.source, identity=identity,
            policy=policy, fstype=cmd.fstype, options=cmd.options,
            holders=(cmd.holder,) if cmd.holder else (),
            created_with_holder=cmd.holder is not None, expire_s=cmd.expire_s,
        )
        await self._commit_new(spec, opened)
        fields = self._reply_fields(spec, opened)
        return fields, {"mounted": cmd.name, "fstype": cmd.fstype, "source": cmd.source}

    async def _hold(self, caller: Caller,
                    cmd: Hold) -> tuple[dict[str, object], dict[str, object]]:
        self.ctx.rules.require_admin(caller, "hold")
        _, spec = self.ctx.table.require(cmd.name)
        if cmd.holder in spec.holders:
            return self._reply_fields(spec, None), {}
        self.ctx.table.check_holder_room(spec, cmd.holder)
        await self._change(spec, with_holder(spec, cmd.holder))
        return self._reply_fields(with_holder(spec, cmd.holder), None), {
            "holder_added": cmd.holder}

    async def _release(self, caller: Caller,
                       cmd: Release) -> tuple[dict[str, object], dict[str, object]]:
        self.ctx.rules.require_admin(caller, "release")
        _, spec = self.ctx.table.require(cmd.name)
        new = without_holder(spec, cmd.holder)
        if not new.holders and spec.created_with_holder:
            await self._remove(spec, force=True)
            return {"name": cmd.name, "detached": True}, {"holder_removed": cmd.holder,
                                                          "detached": cmd.name}
        await self._change(spec, new)
        return {"name": cmd.name, "holders": list(new.holders)}, {"holder_removed": cmd.holder}

    async def _set(self, caller: Caller,
                   cmd: Set) -> tuple[dict[str, object], dict[str, object]]:
        self.ctx.rules.require_self_service(caller, "set")
        _, spec = self.ctx.table.require(cmd.name)
        self._own_or_hidden(caller, spec, "set")
        policy = spec.policy
        changes: dict[str, object] = {}
        if (owner_name := cmd.owner) is not None:
            owner = await _in_thread(lambda: principals.uid_of(owner_name))
            if owner != policy.owner and not self._is_admin(caller):
                raise ControlError(errno.EACCES, "only admins may change the owner")
            policy = dataclasses.replace(policy, owner=owner)
            changes["owner"] = owner
        if cmd.allow is not None:
            allow = cmd.allow
            grants = await _in_thread(lambda: principals.grants_of(allow))
            policy = dataclasses.replace(policy, grants=grants)
            changes["allow"] = await _in_thread(
                lambda: [principals.render_grant(g) for g in grants])
        if cmd.ro is not None:
            policy = dataclasses.replace(policy, ro=cmd.ro)
            changes["ro"] = cmd.ro
        if cmd.squash_root is not None:
            policy = dataclasses.replace(policy, squash_root=cmd.squash_root)
            changes["squash"] = "root" if cmd.squash_root else "none"
        source = self.view.source(cmd.name)
        if cmd.ro is not None and source is not None:
            try:
                sources.set_readonly(source, cmd.ro)
            except OSError as exc:
                raise ControlError(exc.errno or errno.EIO, f"cannot change ro: {exc}") from None
        try:
            await self._change(spec, dataclasses.replace(spec, policy=policy), drop_caches=True)
        except ControlError:
            if cmd.ro is not None and source is not None:
                sources.set_readonly(source, spec.policy.ro)
            raise
        return {"name": cmd.name}, changes

    async def _detach(self, caller: Caller,
                      cmd: Detach) -> tuple[dict[str, object], dict[str, object]]:
        self.ctx.rules.require_self_service(caller, "detach")
        _, spec = self.ctx.table.require(cmd.name)
        self._own_or_hidden(caller, spec, "detach")
        open_files = self.view.open_files(cmd.name)
        if open_files and not cmd.force:
            raise ControlError(errno.EBUSY, f"{cmd.name} has {open_files} open files")
        await self._remove(spec, force=cmd.force)
        return {"name": cmd.name}, {"detached": cmd.name, "force": cmd.force}

    # --- state changes --------------------------------------------------------------------

    async def _change(self, old: SubtreeSpec, new: SubtreeSpec, *,
                      drop_caches: bool = False) -> None:
        assert old.name == new.name
        await self._save(self._specs_replacing(new))
        self.ctx.table.replace(new)
        self.view.republish(new, drop_caches=drop_caches)

    async def _remove(self, spec: SubtreeSpec, *, force: bool) -> None:
        await self._save(self._specs_without(spec.name))
        self._commit_remove(spec.name)

    def _commit_remove(self, name: str) -> None:
        self.ctx.table.remove(name)
        self.view.unpublish(name)  # the source closes after the last open file (SPEC 4)

    async def mark_declared(self, name: str) -> None:
        """Remember that the config declares name (issue 15: `[[subtree]]` tables), so that
        dropping it from the config detaches it. Raises ControlError if the state file fails."""
        async with self._lock:
            found = self.ctx.table.get(name)
            if found is not None and not found[1].declared:
                await self._change(found[1], dataclasses.replace(found[1], declared=True))

    async def record_failed(self, spec: SubtreeSpec) -> None:
        """List a declared subtree that could not be attached, as failed with its reason
        (SPEC 8), if its name is free. Raises ControlError if the state file fails."""
        async with self._lock:
            if self.ctx.table.get(spec.name) is not None:
                return
            await self._save([*self.ctx.table.specs(), spec])
            self.ctx.table.add(spec)

    async def expire(self, name: str, idle: Callable[[], bool] = lambda: True) -> None:
        """Idle expiry (autofs-style): detach with its holders, and say so in the audit log.
        Waits for a running command like any command; idle() is asked again under the lock,
        since the subtree may have been used or replaced meanwhile."""
        async with self._lock:
            found = self.ctx.table.get(name)
            if found is None or not idle():
                return
            _, spec = found
            try:
                await self._remove(spec, force=True)
            except ControlError as exc:
                log.warning("expiry of %s failed: %s", name, exc.message)
                return
            log.info("subtree %s expired after %ss idle", name, spec.expire_s)
            self.audit.record(uid=0, gid=0, pid=0, command=f"expire {name}", ok=True,
                              changes={"detached": name, "expired_after_s": spec.expire_s,
                                       "holders_released": list(spec.holders)})
            await self.view.flush()

    def restore(self, specs: Sequence[SubtreeSpec]) -> None:
        """Re-attach every subtree of the state file at start, before the view is mounted,
        running every check again (SPEC 8). A source whose identity changed, or that fails a
        check, stays listed as failed."""
        for spec in specs:
            if spec.identity is None and spec.state is State.FAILED:
                # Never attached (a declared subtree whose source failed): nothing to compare;
                # the config's reconciliation tries it again.
                self.ctx.table.add(spec)
                continue
            try:
                opened = self._reopen(spec)
            except (ControlError, OSError) as exc:
                reason = exc.message if isinstance(exc, ControlError) else str(exc)
                log.warning("subtree %s not attached: %s", spec.name, reason)
                self.ctx.table.add(dataclasses.replace(spec, state=State.FAILED, reason=reason))
                continue
            self._publish_new(dataclasses.replace(spec, state=State.ATTACHED, reason=""), opened)
            log.info("subtree %s re-attached from %s", spec.name, spec.source)

    def _reopen(self, spec: SubtreeSpec) -> OpenedSource:
        guard = self.ctx.view_guard
        access = self.ctx.config.access
        if spec.kind is Kind.MOUNT:
            identity = sources.mount_source_identity(spec.fstype, spec.source,
                                                     source_roots=access.source_roots,
                                                     guard=guard)
            if not same_source(spec.identity, identity):
                raise ControlError(errno.ESTALE, f"source {spec.source} was replaced "
                                   "(identity changed)")
            return sources.open_mount_source(spec.fstype, spec.source, spec.options,
                                             spec.policy.ro, source_roots=access.source_roots,
                                             guard=guard)
        owner = principals.login_caller(spec.policy.owner)
        self_service = not self._is_admin(owner)
        opened = sources.open_attach_source(
            spec.source, access, owner if self_service else _ROOT,
            self_service=self_service and access.self_service, ro=spec.policy.ro, guard=guard)
        if not same_source(spec.identity, opened.identity):
            opened.close()
            raise ControlError(errno.ESTALE, f"source {spec.source} was replaced "
                               "(identity changed)")
        return opened


def _not_written(exc: StateError | OSError) -> ControlError:
    code = getattr(exc, "errno", None) or errno.EIO
    log.error("state file not written: %s", exc)
    return ControlError(code, f"state file not written: {exc}")


def _require_same_options(spec: SubtreeSpec, policy: Policy, options: str) -> None:
    """A repeated attach/mount must ask for what the subtree already is: a silent success
    would let the caller believe e.g. that a read-write subtree is now read-only (SPEC 4).
    Omitted owner=/allow= mean their defaults (the caller; no grants), as on a first attach."""
    differs = [word for word, same in (
        ("ro", spec.policy.ro == policy.ro),
        ("owner", spec.policy.owner == policy.owner),
        ("allow", set(spec.policy.grants) == set(policy.grants)),
        ("options", spec.kind is not Kind.MOUNT or spec.options == options),
    ) if not same]
    if differs:
        raise ControlError(errno.EEXIST, f"{spec.name} is already attached with other "
                           f"{'/'.join(differs)}: use set to change it")
