"""Client mode: plain TCP in, mTLS out, for clients that cannot do TLS themselves.

::

    ClientTunnel   one accepted plain connection (a Connection the server's sweeper and
                   drain act on), and the mTLS connection it opens to the target
    TLSUpstream    that mTLS connection: the stdlib TLS engine, client side, over
                   memory buffers (StdlibSession), so it can half-close both ways

It runs on the server's lifecycle (listening, handshake and idle timeouts, drain on
SIGTERM, SIGHUP and file-watch reload, metrics) with a TLS state that holds a
client's context (:func:`build_client_state`): ``client.crt``/``client.key``
presented, the target's certificate verified against ``ca.crt`` and its name against
``--server-name`` (the target's host by default).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import cast

from mtlskit.errors import PKIError
from mtlskit.proxy.config import ClientProxyConfig
from mtlskit.proxy.upstream import StreamEnd, Upstream
from mtlskit.server.config import ServerConfig
from mtlskit.server.engine import StdlibSession, TLSClosed, TLSFailure
from mtlskit.server.lifecycle import run as run_lifecycle
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import ContextHolder, TLSState
from mtlskit.tls import client_context

__all__ = ["ClientContext", "ClientTunnel", "TLSUpstream", "build_client_state", "run_client"]

log = logging.getLogger("mtlskit.proxy")

PENDING_HIGH_WATER = 64 * 1024
PathLike = str | os.PathLike[str]


def build_client_state(
    cert: PathLike, key: PathLike, ca: PathLike, *, crl: PathLike | None = None, **_: object
) -> TLSState:
    """A :class:`TLSState` holding a client's context (for :class:`ContextHolder`)."""
    if crl is not None:
        raise PKIError("the client mode checks no CRL")
    return TLSState(
        context=client_context(ca, cert, key),
        server_cert_pem="",
        cert=Path(cert),
        key=Path(key),
        ca=Path(ca),
    )


class ClientContext:
    """What every tunnel of the worker shares: the target, the name to verify, limits."""

    def __init__(self, config: ClientProxyConfig) -> None:
        self.config = config
        self.upstream = Upstream(config.target, config.connect_timeout)
        self.server_name = config.name_to_verify
        self.max_connections = config.max_connections


class TLSUpstream(StreamEnd):
    """The mTLS connection to the target, driven over memory buffers."""

    ready = False  # the handshake is done

    def __init__(self, tunnel: ClientTunnel, session: StdlibSession) -> None:
        super().__init__()
        self.tunnel = tunnel
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tunnel.upstream_connected(self)
        self._handshake()

    def _handshake(self) -> None:
        try:
            done = self.session.do_handshake()
        except TLSFailure as failure:
            self._send_output()
            self.tunnel.handshake_failed(failure)
            return
        self._send_output()
        if done:
            self.ready = True
            self.tunnel.upstream_ready()

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.feed(data)
        if not self.ready:
            self._handshake()
            if not self.ready:
                return
        try:
            plain = session.read()
        except TLSClosed:
            self._send_output()
            self.tunnel.upstream_eof()
            return
        except TLSFailure as failure:
            self._send_output()
            self.tunnel.upstream_broken(failure)
            return
        self._send_output()  # e.g. a key update's answer
        if plain:
            self.tunnel.upstream_data(plain)
        if session.peer_closed:
            self.tunnel.upstream_eof()

    def eof_received(self) -> bool:
        if not self.ready:
            self.tunnel.handshake_failed(
                TLSFailure("eof", "the server closed the connection during the handshake")
            )
            return False
        self.tunnel.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
            self.tunnel.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.tunnel.upstream_paused(True)

    def resume_writing(self) -> None:
        self.tunnel.upstream_paused(False)

    def _send_output(self) -> None:
        out = self.session.output()
        if out and self.transport is not None and not self.closing:
            self.transport.write(out)

    def send(self, data: bytes) -> None:
        try:
            self.session.write(data)
        except TLSFailure as failure:
            self.tunnel.upstream_broken(failure)
            return
        self._send_output()

    def send_eof(self) -> None:
        """close_notify: we send no more; the server may go on (TLS 1.3)."""
        self.session.shutdown()
        self._send_output()


class ClientTunnel(asyncio.Protocol):
    """One plain client of the proxy, and its mTLS connection to the target."""

    transport: asyncio.Transport | None = None
    upstream: TLSUpstream | None = None
    handshaking = True  # until the mTLS connection to the target is established
    closed = False
    local_done = False  # the local client sends nothing more
    remote_done = False  # the target sends nothing more
    local_write_paused = False
    _connecting: asyncio.Task[None] | None = None
    _peer: str = "?"

    def __init__(
        self,
        server_state: ServerState,
        rules: ConnectionRules,
        tls: TLSState,
        context: ClientContext,
    ) -> None:
        self.server_state = server_state
        self.tls = tls  # the client's certificate as it was at accept time
        self.context = context
        self.idle_timeout = rules.idle_timeout
        self.started = self.last_active = server_state.now
        self.pending: list[bytes] = []
        self.pending_size = 0

    # -- the local, plain side --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "local")
        state = self.server_state
        state.connection_opened(self)
        if state.draining:
            self.abort()
            return
        if state.stats.open_connections > self.context.max_connections:
            log.warning(
                "refused a connection from %s: %d connections are open (--max-connections)",
                self._peer,
                self.context.max_connections,
            )
            self.abort()
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        context = self.context
        session = StdlibSession(self.tls.context, server_hostname=context.server_name)
        try:
            await context.upstream.open(lambda: TLSUpstream(self, session))
        except (OSError, TimeoutError) as exc:
            if not self.closed:
                context.upstream.failed(self.server_state.stats, self._peer, exc)
                self.close()
        finally:
            self._connecting = None

    def data_received(self, data: bytes) -> None:
        self.last_active = self.server_state.now
        upstream = self.upstream
        if upstream is not None and upstream.ready:
            upstream.send(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.local_done = True
        upstream = self.upstream
        if upstream is not None and upstream.ready:
            upstream.send_eof()
        elif self._connecting is None and upstream is None:
            return False
        self._maybe_finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            upstream = self.upstream
            if upstream is not None and not upstream.closing:
                if exc is None and self.local_done:
                    upstream.close()
                else:
                    upstream.abort()
        if self._connecting is not None:
            self._connecting.cancel()
        self.server_state.connection_closed(self)

    def pause_writing(self) -> None:
        self.local_write_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.local_write_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- the mTLS side ----------------------------------------------------------------------------

    def upstream_connected(self, upstream: TLSUpstream) -> None:
        self.server_state.stats.upstream_ok += 1
        if self.closed:
            upstream.abort()
            return
        self.upstream = upstream
        if self.local_write_paused:
            upstream.pause_reading()

    def upstream_ready(self) -> None:
        self.handshaking = False
        self.server_state.stats.handshakes_ok += 1
        upstream = self.upstream
        assert upstream is not None
        if self.pending:
            upstream.send(b"".join(self.pending))
            self.pending.clear()
            self.pending_size = 0
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        if self.local_done:
            upstream.send_eof()

    def handshake_failed(self, failure: TLSFailure) -> None:
        self.server_state.stats.handshake_failed(failure.reason)
        log.warning(
            "TLS handshake with the target %s for %s failed: %s (%s)",
            self.context.upstream.target,
            self._peer,
            failure.detail,
            failure.reason,
        )
        self.close()

    def upstream_broken(self, failure: TLSFailure) -> None:
        log.warning(
            "the target %s ended the connection of %s: %s (%s)",
            self.context.upstream.target,
            self._peer,
            failure.detail,
            failure.reason,
        )
        self.abort()

    def upstream_data(self, data: bytes) -> None:
        self.last_active = self.server_state.now
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def upstream_eof(self) -> None:
        if self.remote_done:
            return
        self.remote_done = True
        if self.transport is not None and not self.closed and self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_finish()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        if self.remote_done and exc is None:
            self.close()
        else:
            self.abort()

    def upstream_paused(self, paused: bool) -> None:
        if self.transport is None or self.closed:
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _maybe_finish(self) -> None:
        if self.local_done and self.remote_done:
            self.close()

    # -- what the server's sweeper and drain ask (mtlskit.server.state.Connection) ---------------

    def close(self) -> None:
        if self.upstream is not None and not self.upstream.closing:
            if self.upstream.ready:
                self.upstream.send_eof()
            self.upstream.close()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.upstream is not None:
            self.upstream.abort()
        if self.transport is not None:
            self.transport.abort()

    def handshake_timed_out(self) -> None:
        self.server_state.stats.handshake_failed("timeout")
        log.warning(
            "TLS handshake with the target %s for %s timed out",
            self.context.upstream.target,
            self._peer,
        )
        self.abort()

    def shutdown_if_idle(self) -> None:
        if self.handshaking:
            self.close()  # a stream under way may run to its end (until the drain's timeout)

    def waiting_on_peer(self) -> bool:
        return True  # the idle timeout counts bytes either way

    def check_timeouts(self, now: float) -> None:
        """The worker's sweeper, after the handshake: the idle timeout (server/state.py)."""
        if now - self.last_active > self.idle_timeout:
            self.close()


def run_client(config: ClientProxyConfig) -> None:
    """``mtlskit proxy client``: serve until SIGINT/SIGTERM, then drain."""
    holder = ContextHolder(
        config.cert_path, config.key_path, config.ca_path, build=build_client_state
    )
    listener = ServerConfig(
        certs=config.certs,
        host=config.listen.host,
        port=config.listen.port,
        handshake_timeout=config.handshake_timeout,
        idle_timeout=config.idle_timeout,
        shutdown_timeout=config.shutdown_timeout,
        watch_interval=config.watch_interval,
        ticket_key_rotation=0,
        metrics_port=config.metrics_port,
        metrics_host=config.metrics_host,
    )
    context = ClientContext(config)

    def make(state: ServerState, rules: ConnectionRules, tls: TLSState) -> asyncio.Protocol:
        return ClientTunnel(state, rules, tls, context)

    run_lifecycle(listener, protocol=make, banner=config.banner, holder=holder)
