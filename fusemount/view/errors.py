"""The one boundary between handlers and pyfuse3 (STYLE: Errors).

pyfuse3 ends its main loop when a handler raises anything but FUSEError, taking the
whole view down. Every handler is wrapped: FUSEError passes, OSError becomes its errno,
any other Exception is logged with its traceback and answered EIO. Cancellation
(BaseException) still travels. Each request is also timed and handed to the observer the
daemon passed to Ops (metrics, busy_poll, the debug log).
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

import pyfuse3

log = logging.getLogger("fusemount.ops")

P = ParamSpec("P")
R = TypeVar("R")


class RequestObserver(Protocol):
    """Told of every answered request (metrics, busy_poll, the debug log): passed to Ops by
    the daemon, read from the handler's instance (`observer`), never a module global."""

    def observe(self, op: str, seconds: float, errno_: int, args: tuple[object, ...]) -> None:
        ...


def show(args: tuple[object, ...]) -> str:
    """Request arguments for the debug log: data buffers by size, contexts by caller."""
    parts = []
    for arg in args:
        if isinstance(arg, bytes) and len(arg) > 64:
            parts.append(f"<{len(arg)} bytes>")
        elif isinstance(arg, pyfuse3.RequestContext):
            parts.append(f"uid={arg.uid},gid={arg.gid},pid={arg.pid}")
        else:
            parts.append(repr(arg))
    return ", ".join(parts)


def fuse_handler(
    fn: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    op = fn.__name__
    clock = time.perf_counter

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = clock()
        code = 0
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError as exc:
            code = exc.errno
            raise
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            code = errno.EIO
            log.exception("%s failed unexpectedly; answering EIO", op)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            # args[0] is the Operations instance (ops.Ops.observer).
            observer: RequestObserver | None = getattr(args[0], "observer", None)
            if observer is not None:
                observer.observe(op, clock() - start, code, args[1:])

    return wrapper
