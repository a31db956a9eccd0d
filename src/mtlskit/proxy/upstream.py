"""The target of the proxy: how to reach it, and the ends of a proxied connection.

:class:`Upstream` connects to the target within the connect timeout, and turns a
failure into one log line and a count (:meth:`Upstream.failed`), for every mode:
L4 and L7 server mode, and client mode (whose :class:`~mtlskit.proxy.client.TLSUpstream`
then handshakes over that connection).

:class:`StreamEnd` is what each end over an asyncio transport does when its owner
asks: flow control, close, abort. :class:`PlainStream` is the plain TCP or
unix-socket end (the target in server mode); it hands what it reads, its end of
file and its flow control to its owner, the TLS end, which decides what to do with
them (:class:`PlainOwner`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from mtlskit.proxy.config import Address
from mtlskit.server.stats import Stats

__all__ = ["PlainOwner", "PlainStream", "StreamEnd", "Upstream", "failure_text"]

log = logging.getLogger("mtlskit.proxy")

P = TypeVar("P", bound=asyncio.Protocol)


class PlainOwner(Protocol):
    """What a :class:`PlainStream` reports to."""

    def plain_connected(self, stream: PlainStream) -> None: ...

    def plain_data(self, data: bytes) -> None: ...

    def plain_eof(self) -> None: ...

    def plain_lost(self, exc: Exception | None) -> None: ...

    def plain_paused(self, paused: bool) -> None: ...


class StreamEnd(asyncio.Protocol):
    """One end of a proxied connection over an asyncio transport: what its owner asks."""

    __slots__ = ("closing", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closing = False  # closed by us (the owner knows): no event for it

    def pause_reading(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closing and self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after what is queued has been sent."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class PlainStream(StreamEnd):
    """One plain connection; its owner forwards its bytes and is told of its events."""

    __slots__ = ("owner",)

    def __init__(self, owner: PlainOwner) -> None:
        super().__init__()
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        # Now, not when the task that connected resumes: the peer may already have
        # sent (and closed) by then, and what it sent must find its way.
        self.owner.plain_connected(self)

    def data_received(self, data: bytes) -> None:
        self.owner.plain_data(data)

    def eof_received(self) -> bool:
        self.owner.plain_eof()
        return True  # keep writing: the other direction may go on (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.owner.plain_lost(exc)

    def pause_writing(self) -> None:
        self.owner.plain_paused(True)

    def resume_writing(self) -> None:
        self.owner.plain_paused(False)

    # -- what the owner asks ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closing and self.transport is not None:
            self.transport.write(data)

    def write_eof(self) -> None:
        t = self.transport
        if not self.closing and t is not None and t.can_write_eof():
            t.write_eof()


class Upstream:
    """How to reach the target (TCP or unix socket), within the connect timeout."""

    def __init__(self, target: Address, connect_timeout: float) -> None:
        self.target = target
        self.connect_timeout = connect_timeout

    async def open(self, factory: Callable[[], P]) -> P:
        """Connect; raises OSError or TimeoutError (:meth:`failed` tells of them)."""
        loop = asyncio.get_running_loop()
        target = self.target
        if target.path is not None:
            coro = loop.create_unix_connection(factory, str(target.path))
        else:
            # TCP_NODELAY: asyncio and uvloop set it on the connections they make.
            coro = loop.create_connection(factory, target.host, target.port)
        _, protocol = await asyncio.wait_for(coro, self.connect_timeout)
        return protocol

    def failed(self, stats: Stats, who: str, exc: BaseException) -> None:
        """:meth:`open` failed for ``who`` (a client, as the log names it): count it, and
        one log line that says why."""
        stats.upstream_failed += 1
        log.warning(
            "cannot reach the target %s for %s: %s",
            self.target,
            who,
            failure_text(exc, self.connect_timeout),
        )


def failure_text(exc: BaseException, timeout: float) -> str:
    """``connection refused``, ``no answer within 5s`` …: why a connect failed."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s (--connect-timeout)"
    if isinstance(exc, OSError):
        # create_connection tries each address of a name; when all fail it raises one
        # OSError without errno that lists them.
        if exc.errno == errno.ECONNREFUSED or f"[Errno {errno.ECONNREFUSED}]" in str(exc):
            return "connection refused (is it running?)"
        if exc.errno == errno.ENOENT:
            return "no such socket (is it running?)"
        text = exc.strerror or str(exc)
        return text[0].lower() + text[1:] if text else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
