"""L7 server mode (``--http``): HTTP/1.1 from the verified client to the target, with the
client's identity in headers the client cannot forge.

::

    HTTPProxy          the client's connection: the server's protocol and parser
                       (BaseProtocol, httptools); one Exchange per request, in order
    Exchange           one request: its head as the target gets it, its body framing
    BackendConnection  one keep-alive connection to the target, parsing its responses
    BackendPool        idle backend connections kept for reuse (--backend-keepalive)

Requests: the parser's framing rules are the server's, and a request whose head the
parser refuses (conflicting Content-Length and Transfer-Encoding, an unknown transfer
coding, an oversized head) is answered 400/431 before anything of it is sent: a
request starts towards the target only after the chunk that completed its head was
parsed without error. Hop-by-hop headers and every identity header are dropped
(:mod:`mtlskit.proxy.headers`), the proxy adds the verified identity, and the body
goes on with the framing the proxy parsed (Content-Length, or chunked re-encoded).

Responses are parsed too (status, headers, framing) and re-framed for the client:
a body without length becomes chunked for an HTTP/1.1 client. A request with
``Upgrade`` (WebSocket) is forwarded with its Upgrade header; on ``101`` the
connection becomes a tunnel, with L4's half-close and flow control (StreamProxy).

A target that cannot be reached answers 502 (504 after ``--connect-timeout``) with
one log line naming the client; a response cut short is a connection cut short,
never a response that looks complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, cast

import httptools

from mtlskit.proxy.config import ProxyConfig
from mtlskit.proxy.headers import HOP_BY_HOP, IDENTITY_HEADERS, identity_headers, normalized
from mtlskit.proxy.headers import proxy_uri_sans as _proxy_uri_sans
from mtlskit.proxy.stream import ProxyContext, StreamProxy
from mtlskit.proxy.upstream import PlainStream
from mtlskit.server.engine import TLSFailure
from mtlskit.server.protocol import BaseProtocol, StopParsing, error_response
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import TLSState

__all__ = ["BackendConnection", "BackendPool", "Exchange", "HTTPContext", "HTTPProxy"]

log = logging.getLogger("mtlskit.proxy")

# Request body buffered (while the target connection is made, or behind an earlier
# request) before reading from the client pauses; pipelined requests likewise.
BODY_HIGH_WATER = 64 * 1024
PIPELINE_MAX = 16
MAX_RESPONSE_HEAD = 64 * 1024
# A pooled connection unused this long is closed rather than reused (the target may
# be about to close it: most servers' keep-alive timeouts are 5 s to a few minutes).
POOL_IDLE_SECONDS = 30.0

RESPONSE_405 = error_response(405, "method not allowed: the proxy does not tunnel CONNECT")
RESPONSE_502 = error_response(502, "bad gateway: the target did not answer")
RESPONSE_504 = error_response(504, "gateway timeout: the target did not accept in time")
_ERRORS = {
    400: error_response(400, "bad request"),
    405: RESPONSE_405,
    431: error_response(431, "request header fields too large"),
}

_NO_BODY_STATUS = (204, 304)
# Spelled with "_" these are not framing to the parser, and must not become framing to a
# target that reads "_" as "-".
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class Exchange:
    """One request through the proxy, and what is known of its response."""

    __slots__ = (
        "backend",
        "body",
        "body_size",
        "chunked",
        "client_keep",
        "had_body",
        "head",
        "head_request",
        "http10",
        "keep_alive",
        "request_done",
        "response_done",
        "response_started",
        "retried",
        "upgrade",
    )

    def __init__(
        self, head: bytes, *, chunked: bool, keep_alive: bool, upgrade: bool, head_request: bool
    ) -> None:
        self.head = head
        self.chunked = chunked  # the body goes on chunked (else Content-Length or none)
        self.keep_alive = keep_alive  # the client wants the connection kept
        self.client_keep = keep_alive  # … and the response lets it be
        self.upgrade = upgrade
        self.head_request = head_request
        self.http10 = False
        self.body: list[bytes] = []  # framed body not yet sent (no backend yet)
        self.body_size = 0
        self.had_body = False
        self.request_done = False  # the whole request has been parsed
        self.backend: BackendConnection | None = None
        self.response_started = False  # its head went to the client
        self.response_done = False
        self.retried = False

    def frame(self, data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def send_body(self, data: bytes) -> None:
        """A piece of the request body (already framed) to the target, or kept."""
        backend = self.backend
        if backend is not None:
            backend.write(data)
        else:
            self.body.append(data)
            self.body_size += len(data)


class BackendPool:
    """Idle keep-alive connections to the target, most recently used first."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.idle: list[BackendConnection] = []

    def take(self, now: float) -> BackendConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.closing:
                continue
            if now - conn.idle_since > POOL_IDLE_SECONDS:
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: BackendConnection, now: float) -> None:
        if len(self.idle) >= self.max_idle or conn.closing:
            conn.close()
            return
        conn.idle_since = now
        conn.resume_reading()  # an idle connection must see the target's FIN
        self.idle.append(conn)

    def discard(self, conn: BackendConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)


class HTTPContext(ProxyContext):
    """The L7 options, and the backend pool of the worker."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config)
        self.pool = BackendPool(config.backend_keepalive)
        self.xfcc_fields: tuple[str, ...] = config.xfcc_fields


class BackendConnection(PlainStream):
    """One connection to the target: requests out, responses parsed and passed on.

    After ``101 Switching Protocols`` it is the plain end of a tunnel and behaves as
    :class:`~mtlskit.proxy.upstream.PlainStream` (its owner is then the client's
    connection, in L4 mode).
    """

    def __init__(self, pool: BackendPool) -> None:
        super().__init__(_NoOwner())
        self.pool = pool
        self.proxy: HTTPProxy | None = None
        self.exchange: Exchange | None = None
        self.parser: Any = None
        self.tunnel = False
        self.reused = False
        self.got_bytes = False
        self.idle_since = 0.0
        self.reading_paused = False
        self._reset_response()

    def _reset_response(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.head_size = 0
        self.final = False  # the head of the final (non-1xx) response was parsed
        self.framing = "none"  # how the target frames the body: length, chunked, close, none
        self.to_client_chunked = False
        self.complete = False
        self.reusable = False

    # -- one exchange -------------------------------------------------------------------------

    def begin(self, proxy: HTTPProxy, exchange: Exchange) -> None:
        self.proxy = proxy
        self.exchange = exchange
        exchange.backend = self
        self.got_bytes = False
        self._reset_response()
        self.parser = httptools.HttpResponseParser(self)
        body = b"".join(exchange.body)  # with the chunked end, if the request is complete
        exchange.body.clear()
        exchange.body_size = 0
        self.write(exchange.head + body)
        if proxy.write_paused:
            self.pause_reading()
        if body:
            proxy.update_reading()  # the body kept meanwhile may have paused the client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a request is sent first

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.owner.plain_data(data)
            return
        proxy, exchange = self.proxy, self.exchange
        if proxy is None or exchange is None:
            self.pool.discard(self)  # bytes nobody asked for: not reusable
            self.close()
            return
        self.got_bytes = True
        proxy.last_active = proxy.server_state.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.final and exchange.upgrade:
                proxy.push()
                proxy.switch_to_tunnel(self, data[exc.args[0] :])
                return
            self._failed("an upgrade the request did not ask for")
            return
        except (httptools.HttpParserError, StopParsing) as exc:
            if not self.complete:
                self._failed(f"an invalid response ({exc or 'head too large'})")
                return
            self.reusable = False  # bytes after the response: never reuse this connection
        if self.final and self.framing == "none" and not self.complete:
            self._finish()  # a response without body (to HEAD): the parser would wait for one
        proxy.push()
        if self.complete:
            self._hand_back()

    def eof_received(self) -> bool:
        if self.tunnel:
            return super().eof_received()
        if self.exchange is None:
            self.pool.discard(self)
            return False
        if self.final and self.framing == "close" and not self.complete:
            self._finish()  # the body ran to the end of the connection
            if self.proxy is not None:
                self.proxy.push()
            self._hand_back()
        else:
            self._failed("the connection closed before the response was complete")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel:
            super().connection_lost(exc)
            return
        self.closing = True
        self.pool.discard(self)
        if self.exchange is not None and not self.complete:
            self._failed(f"the connection failed ({exc})" if exc else "the connection closed")

    def pause_writing(self) -> None:
        if self.tunnel:
            super().pause_writing()
        elif self.proxy is not None:
            self.proxy.backend_paused(True)

    def resume_writing(self) -> None:
        if self.tunnel:
            super().resume_writing()
        elif self.proxy is not None:
            self.proxy.backend_paused(False)

    def pause_reading(self) -> None:
        self.reading_paused = True
        super().pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            super().resume_reading()

    def _failed(self, why: str) -> None:
        proxy, exchange = self.proxy, self.exchange
        self.exchange = self.proxy = None
        self.close()
        if proxy is not None and exchange is not None:
            proxy.backend_failed(self, exchange, why)

    # -- response parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise StopParsing  # a second response to one request
        self.headers = []
        self.reason = b""
        self.head_size = 0

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_RESPONSE_HEAD:
            raise StopParsing
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        proxy, exchange = self.proxy, self.exchange
        assert proxy is not None and exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            if not exchange.http10:  # an HTTP/1.0 client knows no interim responses
                proxy.write(self._head(status, b""))
            return
        self.final = True
        exchange.response_started = True
        drop = _connection_tokens(self.headers)
        has_length = chunked = False
        for name, value in self.headers:
            n = name.lower()
            if n == b"content-length":
                has_length = True
            elif n == b"transfer-encoding":
                chunked = value.lower().rstrip().endswith(b"chunked")
        if status == 101:
            extra = b"Connection: Upgrade\r\n"
            drop.discard(b"upgrade")
        else:
            if exchange.head_request or status in _NO_BODY_STATUS:
                self.framing = "none"
            elif chunked:
                self.framing = "chunked"
            elif has_length:
                self.framing = "length"
            else:
                self.framing = "close"
            if self.framing in ("chunked", "close"):
                if exchange.http10:
                    exchange.client_keep = False  # the end of the body is the end of it all
                else:
                    self.to_client_chunked = True
            if not exchange.request_done or exchange.upgrade:
                # Answered before the whole request came, or an upgrade refused (what the
                # client sends next is not HTTP): close after this response.
                exchange.client_keep = False
            if proxy.server_state.draining:
                exchange.client_keep = False
            if not exchange.client_keep:
                extra = b"Connection: close\r\n"
            elif exchange.http10:
                extra = b"Connection: keep-alive\r\n"
            else:
                extra = b""
            if self.to_client_chunked:
                extra += b"Transfer-Encoding: chunked\r\n"
        proxy.write(self._head(status, extra, drop))

    def _head(self, status: int, extra: bytes, drop: set[bytes] | None = None) -> bytes:
        drop = drop if drop is not None else _connection_tokens(self.headers)
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason)]
        for name, value in self.headers:
            n = name.lower()
            if n in drop or (n in HOP_BY_HOP and not (status == 101 and n == b"upgrade")):
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(extra)
        lines.append(b"\r\n")
        return b"".join(lines)

    def on_body(self, body: bytes) -> None:
        proxy = self.proxy
        assert proxy is not None
        proxy.write(b"%x\r\n%s\r\n" % (len(body), body) if self.to_client_chunked else body)

    def on_message_complete(self) -> None:
        if self.final and not self.complete:
            self._finish()

    def _finish(self) -> None:
        """The response is complete (inside a parser callback: see :meth:`_hand_back`)."""
        self.complete = True
        assert self.proxy is not None and self.exchange is not None
        if self.to_client_chunked:
            self.proxy.write(b"0\r\n\r\n")
        self.reusable = (
            self.framing != "close"
            and self.exchange.request_done
            and self.parser.should_keep_alive()
        )

    def _hand_back(self) -> None:
        """After the parser returned: the exchange is over; keep this connection or close it."""
        proxy, exchange = self.proxy, self.exchange
        if proxy is None or exchange is None:
            return
        reusable = self.reusable and not self.closing
        self.proxy = self.exchange = None
        self.parser = None
        exchange.backend = None
        proxy.response_done(exchange, self if reusable else None)
        if not reusable:
            self.close()


class _NoOwner:
    """The owner of a backend connection before it becomes a tunnel (never called)."""

    def plain_connected(self, stream: PlainStream) -> None:
        raise AssertionError("not a tunnel")

    def plain_data(self, data: bytes) -> None:
        raise AssertionError("not a tunnel")

    def plain_eof(self) -> None:
        raise AssertionError("not a tunnel")

    def plain_lost(self, exc: Exception | None) -> None:
        raise AssertionError("not a tunnel")

    def plain_paused(self, paused: bool) -> None:
        raise AssertionError("not a tunnel")


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names a Connection header lists: hop-by-hop for this message only."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


class HTTPProxy(StreamProxy):
    """One client connection in L7 mode (see the module's docstring)."""

    context: HTTPContext
    tunneling = False  # after 101: bytes both ways, as L4
    upgrading = False  # an Upgrade request was sent: its answer is awaited
    backend_write_paused = False
    pending_error = 0

    def __init__(
        self, server_state: ServerState, rules: ConnectionRules, tls: TLSState, context: HTTPContext
    ) -> None:
        super().__init__(server_state, rules, tls, context)
        self.headers: list[tuple[bytes, bytes]] = []
        self.exchanges: deque[Exchange] = deque()  # the one at the target first
        self.parsing: Exchange | None = None
        self._identity_block: bytes | None = None

    def start_application(self) -> None:
        BaseProtocol.start_application(self)  # the HTTP parser; access is checked per head

    # -- client input -------------------------------------------------------------------------

    def received(self, plain: bytes) -> None:
        if self.tunneling or self.upgrading:
            StreamProxy.received(self, plain)  # to the tunnel, or kept until the 101
            return
        BaseProtocol.received(self, plain)
        self._dispatch()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_header(name, value)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.allowed is None and not self.access_allowed():
            self.refuse()
            return
        parser = self.parser
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            self.error_status = 405
            raise StopParsing
        upgrade = parser.should_upgrade()
        drop = _connection_tokens(self.headers)
        if upgrade:
            drop.discard(b"upgrade")
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        lines = [b"%s %s HTTP/1.1\r\n" % (method, self.url)]
        for name, value in self.headers:
            lower = name.lower()  # the framing is what the parser read: exact names only
            if lower == b"content-length":
                lengths.add(value.strip())
                continue
            if lower == b"transfer-encoding":
                codings.extend(c.strip().lower() for c in value.split(b","))
                continue
            n = normalized(name)  # "X_Forwarded_For" is X-Forwarded-For to a WSGI server
            if n in IDENTITY_HEADERS or n in drop or n in _FRAMING:
                continue
            if n in HOP_BY_HOP and not (upgrade and lower == b"upgrade"):
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        # The parser refuses most of these already; the proxy relies on none of it.
        if (codings and (lengths or codings != [b"chunked"])) or len(lengths) > 1:
            self.error_status = 400
            raise StopParsing
        chunked = bool(codings)
        if lengths:
            lines.append(b"Content-Length: %s\r\n" % lengths.pop())
        elif chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        if upgrade:
            lines.append(b"Connection: Upgrade\r\n")
        lines.append(self.identity_block())
        lines.append(b"\r\n")
        exchange = Exchange(
            b"".join(lines),
            chunked=chunked,
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
            head_request=method == b"HEAD",
        )
        exchange.http10 = parser.get_http_version() == "1.0"
        self.parsing = exchange
        self.exchanges.append(exchange)
        self.server_state.stats.requests += 1
        if not self.rules.quiet:
            self.log_request(method)
        if len(self.exchanges) > PIPELINE_MAX:
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.response_done:
            return
        exchange.had_body = True
        exchange.send_body(exchange.frame(body))
        if exchange.body_size > BODY_HIGH_WATER:
            self.update_reading()

    def on_message_complete(self) -> None:
        self.in_request = False
        exchange = self.parsing
        if exchange is None:
            return
        self.parsing = None
        exchange.request_done = True
        if exchange.chunked and not exchange.response_done:
            exchange.send_body(b"0\r\n\r\n")

    def upgrade_requested(self, rest: bytes) -> None:
        if not self.exchanges or not self.exchanges[-1].upgrade:
            self.close_after_response()  # refused (403) before it went anywhere
            return
        self.upgrading = True
        self.parser = None  # what follows is the new protocol's
        if rest:
            StreamProxy.received(self, rest)
        self._dispatch()

    def identity_block(self) -> bytes:
        """The identity headers of this connection, computed on its first request."""
        if self._identity_block is None:
            ident = self.identity
            session = self.session
            assert ident is not None and session is not None
            fields = self.context.xfcc_fields
            by = _proxy_uri_sans(self.tls.server_cert_pem) if "By" in fields else ()
            peer = self.peer
            self._identity_block = identity_headers(
                ident,
                session.peer_chain_der(),
                str(peer[0]) if peer else None,
                xfcc_fields=fields,
                by=by,
            )
        return self._identity_block

    # -- exchanges -------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start the first request towards the target, if it is not on its way yet."""
        if not self.exchanges or self.closed:
            return
        exchange = self.exchanges[0]
        if exchange.backend is not None or exchange.response_done:
            return
        if exchange is self.parsing and self.pending_error:
            return
        conn = self.context.pool.take(self.server_state.now)
        if conn is not None:
            conn.reused = True
            conn.begin(self, exchange)
        elif self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_backend())

    async def _connect_backend(self) -> None:
        context = self.context
        try:
            conn = await context.upstream.open(lambda: BackendConnection(context.pool))
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            if not self.closed:
                context.target_failed(self, exc)
                self._gateway_error(RESPONSE_504 if isinstance(exc, TimeoutError) else RESPONSE_502)
            return
        self._connecting = None
        self.server_state.stats.upstream_ok += 1
        if self.closed or not self.exchanges or self.exchanges[0].backend is not None:
            context.pool.put(conn, self.server_state.now)
            return
        conn.begin(self, self.exchanges[0])

    def _gateway_error(self, response: bytes) -> None:
        """The first request cannot reach the target: answer it, and close."""
        self.exchanges.clear()
        self.parsing = None
        self.send_now(response)
        self.close()

    def backend_failed(self, conn: BackendConnection, exchange: Exchange, why: str) -> None:
        if self.closed:
            return
        if (
            conn.reused
            and not conn.got_bytes
            and not exchange.had_body
            and not exchange.chunked
            and not exchange.retried
        ):
            # A kept connection the target had closed as it was reused: once more, new.
            exchange.retried = True
            exchange.backend = None
            if exchange.request_done:
                self._dispatch_new(exchange)
                return
        ident = self.identity
        log.warning(
            "the target %s failed a request for %s from %s: %s",
            self.context.upstream.target,
            ident.describe() if ident else "?",
            self.peer_text(),
            why,
        )
        self.server_state.stats.upstream_failed += 1
        if exchange.response_started:
            self.abort()  # a response cut short must not look complete
        else:
            self._gateway_error(RESPONSE_502)

    def _dispatch_new(self, exchange: Exchange) -> None:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect_backend())

    def response_done(self, exchange: Exchange, conn: BackendConnection | None) -> None:
        exchange.response_done = True
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if conn is not None:
            self.context.pool.put(conn, self.server_state.now)
        if self.backend_write_paused:
            self.backend_write_paused = False
        if not exchange.client_keep or self.server_state.draining:
            self.push()
            self.close()
            return
        if self.pending_error and not self.exchanges:
            self.write(_ERRORS.get(self.pending_error, _ERRORS[400]))
            self.push()
            self.close()
            return
        if self._close_after and not self.exchanges and not self.in_request:
            self.push()
            self.close()
            return
        self._dispatch()
        self.update_reading()

    def switch_to_tunnel(self, conn: BackendConnection, rest: bytes) -> None:
        """101 Switching Protocols: from now on, bytes both ways (L4's machinery)."""
        self.exchanges.clear()
        conn.exchange = None
        conn.parser = None
        conn.tunnel = True
        conn.owner = self
        self.upgrading = False
        self.tunneling = True
        self.target = conn
        if rest:
            self.send_now(rest)
        if self.pending:
            conn.write(b"".join(self.pending))
            self.pending.clear()
            self.pending_size = 0
        if self.client_done:
            conn.write_eof()
        self.update_reading()

    # -- output ----------------------------------------------------------------------------------

    def push(self) -> None:
        """Send what the callbacks queued (one TLS write per chunk from the target)."""
        if self.closed:
            return
        self.last_active = self.server_state.now
        try:
            self.flush()
        except TLSFailure:
            self.abort()

    def http_error(self, status: int) -> None:
        self.server_state.stats.bad_requests += 1
        self.in_request = False
        parsing = self.parsing
        if parsing is not None and parsing.backend is None and self.exchanges:
            if self.exchanges[-1] is parsing:
                self.exchanges.pop()  # its head was refused: it never leaves
            self.parsing = None
        if any(e.backend is not None or e.request_done for e in self.exchanges):
            self.pending_error = status  # after the responses owed, in order
            self.close_after_response()
            return
        self.exchanges.clear()
        self.write(_ERRORS.get(status, _ERRORS[400]))
        self.close_after_response()

    # -- flow control and lifecycle ----------------------------------------------------------------

    def backend_paused(self, paused: bool) -> None:
        self.backend_write_paused = paused
        self.update_reading()

    def wants_read_pause(self) -> bool:
        if self.tunneling or self.upgrading:
            return super().wants_read_pause()
        parsing = self.parsing
        return (
            self.write_paused  # a client that does not read its responses
            or self.backend_write_paused
            or len(self.exchanges) > PIPELINE_MAX
            or (parsing is not None and parsing.body_size > BODY_HIGH_WATER)
        )

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self.tunneling and self.exchanges and self.exchanges[0].backend is not None:
            self.exchanges[0].backend.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.tunneling and self.exchanges and self.exchanges[0].backend is not None:
            self.exchanges[0].backend.resume_reading()

    def responses_owed(self) -> bool:
        return bool(self.exchanges) or self.upgrading

    def close_after_response(self) -> None:
        if self.tunneling:
            super().close_after_response()  # the client's end of the tunnel
        else:
            BaseProtocol.close_after_response(self)

    def tls_closed(self) -> None:
        if self.tunneling:
            super().tls_closed()
        elif self.responses_owed():
            self.close_after_response()  # answer what was asked, then close
        else:
            self.close()

    def eof_received(self) -> bool | None:
        if self.tunneling:
            return super().eof_received()
        if self.handshaking or self.closed or not self.responses_owed():
            return False
        self.close_after_response()
        return True

    def shutdown_if_idle(self) -> None:
        if self.tunneling:
            super().shutdown_if_idle()
        else:
            BaseProtocol.shutdown_if_idle(self)

    def lost(self) -> None:
        super().lost()
        for exchange in self.exchanges:
            conn = exchange.backend
            if conn is not None:
                conn.exchange = conn.proxy = None
                conn.close()  # a response half read cannot be reused
        self.exchanges.clear()
