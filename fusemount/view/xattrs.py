"""Extended attribute handlers (SPEC 3 xattrs).

No *xattr call accepts an O_PATH descriptor, so backing.py goes through /proc/self/fd/N.
trusted.* and security.* are root's: the daemon keeps CAP_SYS_ADMIN even with a borrowed
fsuid, so without this filter anyone could write them through the view.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pyfuse3
from pyfuse3 import (
    InodeT,
    RequestContext,
    XAttrNameT,
)

from fusemount.core.records import Caller
from fusemount.host import backing
from fusemount.view.gate import SquashedRoot, Steps
from fusemount.view.inodes import Node

_PRIVATE_XATTR_NS = (b"trusted.", b"security.")
ACL_ACCESS = b"system.posix_acl_access"
_ACL_NAMES = (ACL_ACCESS, b"system.posix_acl_default")


def _reader(caller: Caller) -> Caller:
    """Reads run as root (the kernel checked the caller), but a squashed root as nobody."""
    return caller if isinstance(caller, SquashedRoot) else Caller(0, 0, caller.pid)


class XattrOps:
    """get/list/set/removexattr on subtree nodes; the control files answer for their own
    inodes (ctlfiles.ControlFiles)."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def _xattr_node(self, inode: int, ctx: RequestContext, write: bool) -> tuple[Node, Caller]:
        node = self.steps._node(inode)
        return node, self.steps._enter(ctx, node, write=write, groups=write)

    def _refuse_gate_acl(self, inode: int, name: bytes) -> None:
        if name in _ACL_NAMES and self.steps._is_gate(self.steps._node(inode)):
            raise OSError(errno.EPERM, "a subtree's gate changes with `set` (SPEC 5)")

    def _gate_acl(self, node: Node) -> bytes | None:
        return self.steps.ctx.gate(node.subtree).acl

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> bytes:
        if name == ACL_ACCESS:
            node = self.steps._node(inode)
            if self.steps._is_gate(node):
                # Asked by the kernel to decide whether *this* caller may pass, outsiders
                # included: the gate is not secret, and answering lets the kernel cache it.
                acl = self._gate_acl(node)
                if acl is None:
                    raise OSError(pyfuse3.ENOATTR, "the gate's mode says it all")
                return acl
        node, caller = self._xattr_node(inode, ctx, False)
        if caller.uid != 0 and name.startswith(b"trusted."):
            raise OSError(pyfuse3.ENOATTR, "hidden namespace")
        try:
            return await self.steps._io(node.subtree, backing.getxattr,
                                        (self.steps.inodes.fd(node),), name, _reader(caller))
        except OSError as exc:
            # A source without xattrs (ramfs) has no ACL: say so, and the kernel lets the
            # mode bits decide, as natively; EOPNOTSUPP would fail every access.
            if exc.errno == errno.EOPNOTSUPP and name in _ACL_NAMES:
                raise OSError(pyfuse3.ENOATTR, "no ACL on this source") from None
            raise

    async def listxattr(self, inode: InodeT, ctx: RequestContext) -> Sequence[XAttrNameT]:
        node, caller = self._xattr_node(inode, ctx, False)
        names = await self.steps._io(node.subtree, backing.listxattr,
                                     (self.steps.inodes.fd(node),), _reader(caller))
        if caller.uid != 0:
            names = [n for n in names if not n.startswith(b"trusted.")]
        if self.steps._is_gate(node):
            names = [n for n in names if n != ACL_ACCESS]
            if self._gate_acl(node) is not None:
                names.append(ACL_ACCESS)
        return [XAttrNameT(n) for n in names]

    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes,
                       ctx: RequestContext) -> None:
        self._refuse_gate_acl(inode, name)
        node, caller = self._xattr_node(inode, ctx, True)
        # The daemon keeps CAP_SYS_ADMIN even with a borrowed fsuid, so these namespaces
        # would be writable by anyone through the view: only root may touch them.
        if caller.uid != 0 and name.startswith(_PRIVATE_XATTR_NS):
            raise OSError(errno.EPERM, "namespace reserved to root")
        await self.steps._io(node.subtree, backing.setxattr, (self.steps.inodes.fd(node),),
                             name, value, 0, caller)

    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: RequestContext) -> None:
        self._refuse_gate_acl(inode, name)
        node, caller = self._xattr_node(inode, ctx, True)
        if caller.uid != 0 and name.startswith(_PRIVATE_XATTR_NS):
            raise OSError(errno.EPERM, "namespace reserved to root")
        await self.steps._io(node.subtree, backing.removexattr,
                             (self.steps.inodes.fd(node),), name, caller)


