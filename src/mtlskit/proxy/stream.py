"""L4 server mode: the verified client's bytes to the target and back.

:class:`StreamProxy` is the server's connection protocol
(:class:`~mtlskit.server.protocol.BaseProtocol`: TLS engine, handshake, access
rules, timeouts, drain) with bytes instead of HTTP over TLS. Once the client is
verified and allowed, it connects to the target (within ``--connect-timeout``),
sends the PROXY v2 header if asked, and forwards both ways:

- half-close both ways: the client's close_notify (or FIN) becomes a FIN to the
  target, whose other direction goes on; the target's FIN becomes close_notify and
  a FIN to the client. The connection closes when both directions are done.
- backpressure: when one side's send buffer is full (asyncio's high-water mark),
  reading from the other side pauses until it drains, so a connection holds at most
  a buffer's worth in each direction however fast either side sends.
- a target that cannot be reached: one log line naming the client (CN, SANs,
  address), then close_notify to the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mtlskit.proxy.proxy_protocol import v2_header
from mtlskit.proxy.upstream import PlainStream, Upstream
from mtlskit.server.protocol import BaseProtocol
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import TLSState

if TYPE_CHECKING:
    from mtlskit.proxy.config import ProxyConfig

__all__ = ["ProxyContext", "StreamProxy"]

log = logging.getLogger("mtlskit.proxy")

# Client bytes kept while the target connection is being made, before reading pauses.
PENDING_HIGH_WATER = 64 * 1024


class ProxyContext:
    """What every proxied connection of the worker shares: the target, the options."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.upstream = Upstream(config.target, config.connect_timeout)
        self.max_connections = config.max_connections
        self.proxy_protocol = config.proxy_protocol

    def refuse_over_limit(self, conn: BaseProtocol) -> bool:
        """True (and one log line) when ``conn`` is one connection too many."""
        if conn.server_state.stats.open_connections <= self.max_connections:
            return False
        log.warning(
            "refused a connection from %s: %d connections are open (--max-connections)",
            conn.peer_text(),
            self.max_connections,
        )
        return True

    def target_failed(self, conn: BaseProtocol, exc: BaseException) -> None:
        ident = conn.identity
        who = f"{ident.describe() if ident else '?'} from {conn.peer_text()}"
        self.upstream.failed(conn.server_state.stats, who, exc)


class StreamProxy(BaseProtocol):
    """One client connection in L4 mode (see the module's docstring)."""

    target: PlainStream | None = None
    client_done = False  # the client sends nothing more (close_notify or FIN)
    target_done = False  # the target sends nothing more (FIN)
    target_paused = False  # the target's send buffer is full: the client waits
    pending_size = 0
    _connecting: asyncio.Task[None] | None = None
    _lost_exc: Exception | None = None

    def __init__(
        self,
        server_state: ServerState,
        rules: ConnectionRules,
        tls: TLSState,
        context: ProxyContext,
    ) -> None:
        super().__init__(server_state, rules, tls)
        self.context = context
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.closed and self.context.refuse_over_limit(self):
            self.abort()

    def start_application(self) -> None:
        if not self.access_allowed():  # logs the refusal as one line
            self.server_state.stats.requests_refused += 1
            self.close()
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        context = self.context
        try:
            await context.upstream.open(lambda: PlainStream(self))  # see plain_connected
        except (OSError, TimeoutError) as exc:
            if not self.closed:
                context.target_failed(self, exc)
                self.close()
        finally:
            self._connecting = None

    def plain_connected(self, target: PlainStream) -> None:
        self.server_state.stats.upstream_ok += 1
        if self.closed:  # the client left meanwhile
            target.close()
            return
        self.target = target
        if self.context.proxy_protocol:
            target.write(self._proxy_header())
        if self.pending:
            target.write(b"".join(self.pending))
            self.pending.clear()
            self.pending_size = 0
        if self.client_done:
            target.write_eof()
        if self.write_paused:
            target.pause_reading()
        self.update_reading()

    def _proxy_header(self) -> bytes:
        session = self.session
        assert session is not None and self.transport is not None
        ident = self.identity
        return v2_header(
            self.peer,
            self.transport.get_extra_info("sockname"),
            tls_version=session.version(),
            common_name=ident.common_name if ident else None,
            cipher=session.cipher(),
        )

    # -- client -> target --------------------------------------------------------------------

    def received(self, plain: bytes) -> None:
        if self.closed or self.client_done:
            return
        target = self.target
        if target is not None:
            target.write(plain)
            return
        self.pending.append(plain)
        self.pending_size += len(plain)
        if self.pending_size > PENDING_HIGH_WATER:
            self.update_reading()

    def close_after_response(self) -> None:
        # The client's close_notify came after data: nothing more will come from it.
        self._client_finished()

    def tls_closed(self) -> None:
        self._client_finished()

    def eof_received(self) -> bool | None:
        if self.handshaking or self.closed:
            return False
        self._client_finished()  # a FIN without close_notify: end of the stream all the same
        return True  # keep the socket: the target may still have bytes for the client

    def _client_finished(self) -> None:
        if self.client_done:
            return
        self.client_done = True
        if self.target is not None:
            self.target.write_eof()
        elif self._connecting is None:  # never connected (refused, or failed)
            self.close()
            return
        self._maybe_finish()

    # -- target -> client --------------------------------------------------------------------

    def plain_data(self, data: bytes) -> None:
        self.send_now(data)

    def plain_eof(self) -> None:
        if self.target_done or self.closed:
            return
        self.target_done = True
        session, transport = self.session, self.transport
        assert session is not None and transport is not None
        self.flush()
        session.shutdown()  # close_notify: TLS 1.3 lets the client go on sending
        self.flush()
        if transport.can_write_eof():
            transport.write_eof()
        self._maybe_finish()

    def plain_lost(self, exc: Exception | None) -> None:
        # The target closed on us (a reset, or a close before its FIN): end the client
        # connection the same way rather than let it wait.
        if self.closed:
            return
        if self.target_done and exc is None:
            self.close()
        else:
            self.abort()

    def plain_paused(self, paused: bool) -> None:
        self.target_paused = paused
        self.update_reading()

    def _maybe_finish(self) -> None:
        if self.client_done and self.target_done:
            if self.target is not None:
                self.target.close()
            self.close()

    # -- flow control and lifecycle -------------------------------------------------------------

    def wants_read_pause(self) -> bool:
        # Not write_paused: a client that does not read would otherwise be unable to
        # finish sending (each direction flows on its own).
        return self.target_paused or self.pending_size > PENDING_HIGH_WATER

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.target is not None:
            self.target.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.target is not None:
            self.target.resume_reading()

    def waiting_on_peer(self) -> bool:
        return True  # the idle timeout counts bytes either way (both refresh last_active)

    def shutdown_if_idle(self) -> None:
        # Draining: a stream has no "between requests"; it may run to its end until the
        # shutdown timeout. A handshake in progress is not worth waiting for.
        if self.handshaking and not self.closed:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_exc = exc
        super().connection_lost(exc)

    def lost(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        target = self.target
        if target is not None and not target.closing:
            if self._lost_exc is None and self.client_done:
                target.close()  # what the client sent still reaches the target
            else:
                target.abort()
