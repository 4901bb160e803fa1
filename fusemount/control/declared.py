"""Declarative subtrees: make the table match the config's `[[subtree]]` tables, at start and
on SIGHUP, the way autofs maps and fstab lines are applied (issue 15 item 9).

How this works: every step is an ordinary ctl command run as root through the Controller,
so each one passes every check, is durable in the state file and is in the audit log. A
declared subtree that is missing (or failed) is attached; one with the same source but other
ro/owner/allow gets a `set`; one whose source, fstype or mount options changed is detached
(if nothing is open under it) and attached again; one that was declared before and is not
any more is detached, unless busy. Subtrees attached through ctl and never declared are not
touched. What each declared subtree is stays in its spec (`declared`, in the state file), so
a table dropped from the config while the daemon was down is detached at the next start.

Never: force a detach (open files keep a subtree until the next reload), or stop the daemon
because one declared subtree could not be attached (it is logged and the rest go on).
"""

from __future__ import annotations

import errno
import json
import logging
import shlex

import trio

from fusemount.control.commands import Controller
from fusemount.core import protocol
from fusemount.core.config import decl_command, decl_set_command
from fusemount.core.protocol import Attach, Mount
from fusemount.core.records import (
    Caller,
    ControlError,
    Grant,
    Kind,
    Policy,
    State,
    SubtreeDecl,
    SubtreeSpec,
)
from fusemount.host import principals

log = logging.getLogger(__name__)

_DAEMON = Caller(0, 0, 0)  # pid 0 in the audit log: the daemon itself, from its config


async def reconcile(controller: Controller, decls: tuple[SubtreeDecl, ...]) -> None:
    """Apply decls to the table; each failure is logged and the others still applied."""
    wanted = {decl.name: decl for decl in decls}
    for _, spec in list(controller.ctx.table):
        if spec.declared and spec.name not in wanted:
            await _detach(controller, spec.name, "no longer declared in the config")
    for decl in decls:
        found = controller.ctx.table.get(decl.name)
        current = None if found is None else found[1]
        if current is not None and current.declared and await _up_to_date(current, decl):
            continue  # nothing to do: no command, no audit record on every reload
        replaced = current is not None and current.state is State.ATTACHED and not (
            _same_source(current, decl))
        if replaced and not await _detach(controller, decl.name, "its declared source changed"):
            continue
        code, message = await _run(controller, decl_command(decl))
        if code == errno.EEXIST and current is not None and _same_source(current, decl):
            code, message = await _run(controller, decl_set_command(decl))
        if code:
            log.warning("declared subtree %s not attached: %s", decl.name, message)
            if controller.ctx.table.get(decl.name) is None:
                # Listed as failed with the reason, as a subtree failing at restart is (SPEC 8).
                await _record_failed(controller, decl, message)
            continue
        try:
            await controller.mark_declared(decl.name)
        except ControlError as exc:
            log.warning("declared subtree %s: %s", decl.name, exc.message)


async def _record_failed(controller: Controller, decl: SubtreeDecl, reason: str) -> None:
    owner_name = decl.owner or "root"
    try:
        owner = await trio.to_thread.run_sync(principals.uid_of, owner_name)
    except ControlError:
        owner = 0
    spec = SubtreeSpec(
        name=decl.name, kind=Kind.MOUNT if decl.fstype else Kind.ATTACH, source=decl.source,
        identity=None, policy=Policy(owner=owner, ro=decl.ro), fstype=decl.fstype,
        options=decl.options, state=State.FAILED, reason=reason, declared=True)
    try:
        await controller.record_failed(spec)
    except ControlError as exc:
        log.warning("declared subtree %s: %s", decl.name, exc.message)


async def _up_to_date(spec: SubtreeSpec, decl: SubtreeDecl) -> bool:
    """Is spec attached exactly as decl says (source, ro, owner, grants)? The user database
    is read in a worker (NSS may be remote) while the view serves."""
    if spec.state is not State.ATTACHED or not _same_source(spec, decl):
        return False
    command = protocol.parse(decl_command(decl).encode("utf-8", "surrogateescape"), 1 << 20)
    assert isinstance(command, Attach | Mount), command
    owner_name, allow = command.owner or "root", command.allow

    def look_up() -> tuple[int, tuple[Grant, ...]]:
        return (principals.uid_of(owner_name),
                principals.grants_of(allow) if allow else ())

    try:
        owner, grants = await trio.to_thread.run_sync(look_up)
    except ControlError:
        return False  # a user that vanished: let the command say so
    policy = spec.policy
    return (policy.ro, policy.owner, set(policy.grants)) == (decl.ro, owner, set(grants))


def _same_source(spec: SubtreeSpec, decl: SubtreeDecl) -> bool:
    if (spec.kind is Kind.MOUNT) != bool(decl.fstype) or spec.source != decl.source:
        return False
    return spec.kind is Kind.ATTACH or (spec.fstype, spec.options) == (decl.fstype, decl.options)


async def _detach(controller: Controller, name: str, why: str) -> bool:
    code, message = await _run(controller, f"detach {shlex.quote(name)}")
    if code and code != errno.ENOENT:
        log.warning("declared subtree %s kept: %s, but %s", name, why, message)
        return False
    log.info("declared subtree %s detached: %s", name, why)
    return True


async def _run(controller: Controller, command: str) -> tuple[int, str]:
    code, reply = await controller.execute(_DAEMON, command.encode("utf-8", "surrogateescape"))
    try:
        message = str(json.loads(reply).get("message", ""))
    except (ValueError, AttributeError):
        message = reply.decode("utf-8", "replace").strip()
    return code, f"{command}: {message}"
