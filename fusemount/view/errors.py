"""The one boundary between handlers and pyfuse3 (STYLE: Errors).

pyfuse3 ends its main loop when a handler raises anything but FUSEError, taking the
whole view down. Every handler is wrapped: FUSEError passes, OSError becomes its errno,
any other Exception is logged with its traceback and answered EIO. Cancellation
(BaseException) still travels. Each request is also timed for the metrics.
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


class Observer(Protocol):
    def observe(self, op: str, seconds: float, errno_: int = 0) -> None: ...


class _Sink:
    observer: Observer | None = None
    debug: bool = False
    requests: int = 0  # answered so far; read by busypoll to see whether the view is busy
    burst_every: int = 0  # if set, on_burst() runs after every this many requests
    on_burst: Callable[[], None] | None = None


sink = _Sink()


def _show(args: tuple[object, ...]) -> str:
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
            sink.requests += 1
            if sink.burst_every and not sink.requests % sink.burst_every and sink.on_burst:
                sink.on_burst()
            if sink.observer is not None:
                sink.observer.observe(op, clock() - start, code)
            if sink.debug:
                log.debug("%s(%s) -> %s", op, _show(args[1:]), errno.errorcode.get(code, "ok"))

    return wrapper
