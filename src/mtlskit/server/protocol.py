"""One asyncio.Protocol per connection: TLS over memory buffers, then HTTP/1.1 (httptools).

The protocol sits on the raw TCP transport and drives the TLS engine itself
(server/engine.py), so each connection takes the *current* TLS state at accept
time, a stalled handshake is closed by the sweeper (server/lifecycle.py), and
there is no second protocol layer between the socket and the HTTP parser.

:class:`HelloProtocol` answers every request with the seed's hello world straight
from the parser callbacks; :class:`ASGIProtocol` (server/asgi.py) runs an app.

Nothing a peer sends may raise out of a protocol callback (asyncio would log a
traceback): TLS and HTTP errors become a stats label, maybe one log line, and a
closed connection.

Request framing is the same for both: a malformed request gets 400, a head over the
limits 431, a body over ``--max-body-size`` 413, a head or body that stalls past its
timeout 408, each with ``Connection: close`` and one log line, after the responses to
the requests before it; a client that does not read its response is dropped after
``--write-timeout``. Trailer fields count against the head limits and are dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from typing import Any, cast

import httptools

from mtlskit.identity import PeerIdentity
from mtlskit.server.engine import (
    HELLO_PREFIX,
    PLAIN_HTTP,
    TLSClosed,
    TLSFailure,
    TLSSession,
    check_client_hello,
)
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import TLSState

__all__ = ["BaseProtocol", "HelloProtocol", "HelloResponses"]

log = logging.getLogger("mtlskit.server")

HELLO_BODY = b"hello world \n"

_REASONS = {
    400: b"Bad Request",
    403: b"Forbidden",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(status: int, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
    ) % (status, _REASONS[status], len(body), body)


# After a fatal alert the server reads on (and drops what it reads) at most this long
# before it closes; see BaseProtocol.linger_close.
LINGER_SECONDS = 2.0
# Linux's "send the ACK now" socket option (None elsewhere: the tickets go out at once).
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

RESPONSE_400 = error_response(400, "bad request")
RESPONSE_431 = error_response(431, "request header fields too large")
RESPONSE_403 = error_response(403, "forbidden: your certificate is not allowed here")
ERROR_RESPONSES = {
    400: RESPONSE_400,
    408: error_response(408, "request timeout"),
    413: error_response(413, "request body too large"),
    431: RESPONSE_431,
    505: error_response(505, "HTTP version not supported: use HTTP/1.1"),
}
RESPONSE_PLAIN_HTTP = error_response(
    400, "this port speaks HTTPS with client certificates: use https:// and a client certificate"
)


class HelloResponses:
    """The seed's hello world responses, whole, rebuilt when the Date header changes."""

    __slots__ = ("close", "date", "head_close", "head_keep", "head_keep10", "keep", "keep10")

    def __init__(self, date: bytes) -> None:
        self.date = b""
        self.keep = self.close = self.head_keep = self.head_close = b""
        self.keep10 = self.head_keep10 = b""  # HTTP/1.0 keep-alive must be said
        self.refresh(date)

    def refresh(self, date: bytes) -> None:
        if date == self.date:
            return
        self.date = date
        head = b"HTTP/1.1 200 OK\r\nDate: %s\r\nContent-Length: %d\r\n" % (date, len(HELLO_BODY))
        head += b"Content-Type: text/plain; charset=utf-8\r\n"
        self.head_keep = head + b"\r\n"
        self.head_close = head + b"Connection: close\r\n\r\n"
        self.head_keep10 = head + b"Connection: keep-alive\r\n\r\n"
        self.keep = self.head_keep + HELLO_BODY
        self.close = self.head_close + HELLO_BODY
        self.keep10 = self.head_keep10 + HELLO_BODY


# Client certificates parsed lately (DER -> identity): a client that connects again, as
# most do, costs a look-up instead of ~70 us of parsing (a twentieth of a full P-256
# handshake). Only parsing is saved: each handshake verifies its certificate. Bounded.
@functools.lru_cache(maxsize=1024)
def identity_of(der: bytes) -> PeerIdentity:
    """The :class:`PeerIdentity` of a verified client certificate (DER)."""
    return PeerIdentity.from_der(der)


class StopParsing(Exception):
    """Raised inside a parser callback to stop parsing; ``error_status`` says why."""


class BaseProtocol(asyncio.Protocol):
    """TLS handshake, plaintext I/O, access control, limits, timeouts, closing."""

    # The HTTP parser calls only the callbacks a subclass defines.
    parser: Any

    # Per-connection state starts as these class attributes; an instance stores only
    # what changes (a new connection costs fewer stores: measured per handshake).
    transport: asyncio.Transport | None = None
    session: TLSSession | None = None
    _peer: tuple[str, int] | None = None
    handshaking = True
    closed = False
    _identity: PeerIdentity | None = None
    _close_after = False
    _hello = b""  # the first bytes of the connection, until they show a ClientHello
    _hello_ok = False
    in_request = False  # between the first byte of a request and the end of its body
    request_began = 0.0  # when its first byte came (the head timeout counts from there)
    head_bytes = 0  # -1 once the head is complete (then header fields are trailers)
    head_began = False
    header_count = 0
    content_length = -1  # as the request declared it
    body_bytes = 0
    error_status = 0
    error_detail = ""
    http_version = "1.1"
    connection_field = False  # the request has a Connection field
    url = b""
    write_paused = False
    read_paused = False
    write_blocked = 0.0  # when writing last stopped, or last made progress
    write_backlog = 0  # bytes the transport held then
    _linger: asyncio.TimerHandle | None = None

    def __init__(self, server_state: ServerState, rules: ConnectionRules, tls: TLSState) -> None:
        self.server_state = server_state
        self.rules = rules
        self.tls: TLSState = (
            tls  # the state current at accept time: a reload affects new connections
        )
        self.started = self.last_active = server_state.now
        self.allowed: bool | None = None if rules.check_access else True
        self._out: list[bytes] = []
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        server_state = self.server_state
        server_state.connection_opened(self)
        try:
            self.session = self.tls.new_session()
        except TLSFailure as failure:  # the engine could not allocate the connection
            log.error("cannot accept a connection from %s: %s", self.peer_text(), failure)
            self.server_state.stats.handshake_failed(failure.reason)
            self.abort()
            return
        if server_state.draining:
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = self.server_state.now
        session = self.session
        assert session is not None
        try:
            if self.handshaking and not self._hello_ok:
                self._check_hello(data)
            session.feed(data)
            if self.handshaking:
                if not session.do_handshake():
                    self.flush()
                    return
                self._handshake_done()
                plain = session.read()
                if not plain and session.version() == "TLSv1.3" and self._ack_now():
                    # All that is left to send are the session tickets: they leave with
                    # the first response (or the close) instead of costing a write and
                    # a TCP segment of their own. TLS 1.2 must finish its handshake now.
                    return
            else:
                plain = session.read()
            if plain:
                self.received(plain)
                if session.peer_closed:  # close_notify after the requests: answer, then close
                    self.close_after_response()
            if self._close_after and not self.in_request and not self.responses_owed():
                self.close()
            else:
                self.flush()
        except TLSFailure as failure:
            if self.handshaking:
                self._handshake_failed(failure)
            else:
                self._tls_broken()
        except TLSClosed:
            self.tls_closed()
        except Exception as exc:  # a bug of ours: one line, never the peer's bytes in a traceback
            log.error("internal error on a connection from %s: %r", self.peer_text(), exc)
            log.debug("internal error", exc_info=True)
            self.abort()

    def eof_received(self) -> bool | None:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handshaking and not self.closed:
            self.server_state.stats.handshake_failed("eof")
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.server_state.connection_closed(self)
        self._wake_drainers()
        self.lost()
        # The parser refers back to this protocol: without this cycle the connection and
        # its TLS state (~30 KiB) go now, by reference counting, not at a later full GC.
        self.parser = None

    def pause_writing(self) -> None:
        # A peer that sends requests but does not read the answers: stop reading too,
        # so responses cannot pile up in memory.
        self.write_paused = True
        self.write_blocked = self.server_state.now
        if self.transport is not None:
            self.write_backlog = self.transport.get_write_buffer_size()
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainers()
        self.update_reading()

    def wants_read_pause(self) -> bool:
        """Whether reading should pause now (subclasses add their reasons)."""
        return self.write_paused

    def update_reading(self) -> None:
        want = self.wants_read_pause()
        if want != self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = want
            if want:
                self.transport.pause_reading()
            else:
                # The peer's clocks (head, body) count from now: the wait was ours.
                self.last_active = self.request_began = self.server_state.now
                self.transport.resume_reading()

    # -- TLS -------------------------------------------------------------------------------------

    def _ack_now(self) -> bool:
        """ACK the client's last handshake flight at once (Linux TCP_QUICKACK); False
        where that cannot be done. Without it, a client that leaves Nagle's algorithm on
        (http.client, urllib, a bare ssl socket) holds its request until the ACK, which
        a server with nothing to send delays by 40 ms."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None or _QUICKACK is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            return False
        return True

    def _handshake_done(self) -> None:
        self.handshaking = False
        self.server_state.stats.handshakes_ok += 1
        self.start_application()

    def start_application(self) -> None:
        """The handshake is done: start what runs over TLS (HTTP/1.1 here; the proxy's
        L4 mode forwards bytes instead)."""
        self.parser = httptools.HttpRequestParser(self)

    def tls_closed(self) -> None:
        """The peer's close_notify came with no data before it: close (the proxy's L4
        mode half-closes instead)."""
        self.close()

    def _check_hello(self, data: bytes) -> None:
        """Refuse at once what cannot begin a TLS 1.2+ ClientHello (engine.check_client_hello)."""
        head = self._hello + data[: HELLO_PREFIX - len(self._hello)]
        failure = check_client_hello(head)
        if failure is not None:
            raise failure
        if len(head) >= HELLO_PREFIX:
            self._hello_ok = True
            self._hello = b""
        else:
            self._hello = head

    def _handshake_failed(self, failure: TLSFailure) -> None:
        self.server_state.stats.handshake_failed(failure.reason)
        if failure.reason not in ("eof", "timeout"):
            log.info(
                "TLS handshake error from %s: %s (%s)",
                self.peer_text(),
                failure.detail,
                failure.reason,
            )
        self.closed = True
        if self.transport is None:
            return
        if failure.reason == "eof":  # the client is gone: nothing to tell it
            self.transport.close()
            return
        if failure.detail == PLAIN_HTTP:
            # As nginx: a plain-HTTP client reads a 400 that says why, not an empty reply.
            self.transport.write(RESPONSE_PLAIN_HTTP)
        else:
            self._send_output()  # the alert tells the client why
            if failure.alert:  # refused before the engine saw anything: our own alert
                self.transport.write(failure.alert)
        self.linger_close()

    def linger_close(self) -> None:
        """Close after a fatal alert so that the alert arrives (a lingering close, as nginx's).

        The client may still be sending (TLS 1.3: its request follows its Finished at
        once). Closing a socket with unread bytes, or receiving bytes after the close,
        makes the kernel answer with a reset, and a client that gets the reset first
        (e.g. Windows, which then drops what it has received) never reads the alert.
        So: send the alert and our FIN (shut down the write side), keep reading and
        dropping (``closed`` is set, data_received ignores it) until the client closes
        or :data:`LINGER_SECONDS` have passed, then close.
        """
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        transport.write_eof()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(LINGER_SECONDS, transport.close)

    def handshake_timed_out(self) -> None:
        if self.handshaking and not self.closed:
            self.server_state.stats.handshake_failed("timeout")
            self.closed = True
            assert self.transport is not None
            self.transport.abort()

    def _tls_broken(self) -> None:
        self._send_output()
        self.abort()

    def _send_output(self) -> None:
        assert self.session is not None and self.transport is not None
        out = self.session.output()
        if out:
            self.transport.write(out)

    # -- plaintext output --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue plaintext; :meth:`flush` encrypts and sends everything queued."""
        self._out.append(data)

    def flush(self) -> None:
        if self.closed:
            return
        session = self.session
        assert session is not None and self.transport is not None
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            session.write(data)
        out = session.output()
        if out:
            self.transport.write(out)

    def send_now(self, data: bytes) -> None:
        """Write and flush (outside data_received, e.g. from an ASGI task)."""
        if self.closed:
            return
        self.last_active = self.server_state.now
        self._out.append(data)
        try:
            self.flush()
        except TLSFailure:
            self.abort()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full."""
        if not self.write_paused or self.closed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def close(self) -> None:
        """Flush, send close_notify, close the socket."""
        if self.closed:
            return
        try:
            self.flush()
            if not self.handshaking:
                assert self.session is not None
                self.session.shutdown()
            self._send_output()
        except TLSFailure:
            pass
        self.closed = True
        assert self.transport is not None
        self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close_after_response(self) -> None:
        self._close_after = True

    def settle(self) -> None:
        """After reading (or a timeout): close when nothing more is owed, else send."""
        if self._close_after and not self.in_request and not self.responses_owed():
            self.close()
        else:
            self.flush()

    # -- HTTP ------------------------------------------------------------------------------------

    def received(self, plain: bytes) -> None:
        """Feed decrypted bytes to the HTTP parser."""
        if self._close_after:
            return  # after an error or "Connection: close": nothing more is read
        self.head_began = False
        try:
            self.parser.feed_data(plain)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_requested(plain[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError:
            if self.error_status:
                self.http_error(self.error_status)
                return
            raise
        except StopParsing:
            self.http_error(self.error_status or 400)
            return
        except httptools.HttpParserError as exc:
            self.error_detail = str(exc)
            self.http_error(400)
            return
        if self.in_request and self.head_bytes >= 0 and not self.head_began:
            # A head begun in an earlier chunk is still incomplete: all of this chunk is
            # head the parser buffers (the callbacks count only complete fields).
            self.head_bytes += len(plain)
            if self.head_bytes > self.rules.max_header_bytes:
                self.error_detail = "request head too large"
                self.http_error(431)

    def upgrade_requested(self, rest: bytes) -> None:
        """The last request parsed asks to switch protocols (Upgrade, CONNECT); ``rest`` is
        what followed its head in this chunk. The server does not switch: it answers what
        was parsed, then closes (the proxy's L7 mode tunnels instead)."""
        self.refuse_upgrade()
        self.close_after_response()

    def refuse_upgrade(self) -> None:
        """The last request asked to switch protocols: its response must say close."""

    def stop(self, status: int, detail: str) -> None:
        """From a parser callback: stop parsing, answer ``status`` and close."""
        self.error_status = status
        self.error_detail = detail
        raise StopParsing

    def http_error(self, status: int) -> None:
        """Answer a request that cannot be served (400, 408, 413, 431; why: error_detail)
        and close."""
        self.log_http_error(status)
        self.in_request = False
        self.write(ERROR_RESPONSES[status])
        self.close_after_response()

    def log_http_error(self, status: int) -> None:
        self.server_state.stats.bad_requests += 1
        detail = self.error_detail or "malformed request"
        log.info("bad request from %s: %s (%d)", self.peer_text(), detail, status)

    def on_message_begin(self) -> None:
        self.in_request = True
        self.head_began = True
        self.request_began = self.server_state.now
        self.head_bytes = 0
        self.header_count = 0
        self.content_length = -1
        self.body_bytes = 0
        self.connection_field = False
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.rules.max_header_bytes:
            self.stop(431, "request head too large")

    def count_header(self, name: bytes, value: bytes) -> bool:
        """Apply the head limits to one field; False for a trailer field (after the body),
        which the limits count but nobody gets."""
        count = self.header_count = self.header_count + 1
        rules = self.rules
        if self.head_bytes < 0:
            if count > rules.max_headers:
                self.stop(431, "too many header fields")
            return False
        n = len(name)
        size = self.head_bytes = self.head_bytes + n + len(value) + 4
        if size > rules.max_header_bytes or count > rules.max_headers:
            self.stop(
                431,
                "too many header fields" if count > rules.max_headers else "request head too large",
            )
        if n == 14:
            if name.lower() == b"content-length" and value.isdigit():
                self.content_length = int(value)  # the parser refuses a second, other one
        elif n == 10 and name[0] | 0x20 == 0x63 and name.lower() == b"connection":  # "c"
            self.connection_field = True
        return True

    # The HTTP server protocols refuse a body declared over --max-body-size before it is
    # read (or the app runs): 413 at once, as nginx does.
    limits_body = False

    def check_version(self) -> str:
        """The request's HTTP version; 505 for one other than 1.0 and 1.1 (llhttp reads
        "HTTP/2.0" too). Asked only when needed: formatting it costs a microsecond."""
        version: str = self.parser.get_http_version()
        self.http_version = version
        if version != "1.1" and version != "1.0":
            self.stop(505, f"HTTP/{version} request")
        return version

    def on_headers_complete(self) -> None:
        self.head_bytes = -1  # the head is complete: stop counting
        # (The body timeout counts from last_active: data_received set it with this head.)
        if self.content_length > self.rules.max_body_size and self.limits_body:
            self.stop(413, f"a body of {self.content_length} bytes is over --max-body-size")

    def count_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.rules.max_body_size:
            self.stop(413, "the body is over --max-body-size")

    # -- timeouts ----------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Called by the worker's sweeper after the handshake (see state.Connection)."""
        rules = self.rules
        if self.write_paused:
            size = self.transport.get_write_buffer_size() if self.transport else 0
            if size < self.write_backlog:  # the peer reads, slowly
                self.write_backlog, self.write_blocked = size, now
            elif now - self.write_blocked > rules.write_timeout:
                log.info(
                    "closed the connection from %s: it read nothing of its response for "
                    "%gs (--write-timeout)",
                    self.peer_text(),
                    rules.write_timeout,
                )
                self.abort()
            return
        if self.in_request:
            if self.read_paused:
                return  # the wait is ours (the app has not taken the body yet), not the peer's
            if self.head_bytes >= 0:
                if now - self.request_began > rules.head_timeout:
                    self.request_timed_out(
                        f"request head not complete after {rules.head_timeout:g}s"
                    )
            elif now - self.last_active > rules.body_timeout:
                self.request_timed_out(
                    f"request body stalled for {rules.body_timeout:g}s "
                    f"({self.body_bytes} bytes{self._of_length()} received)"
                )
            return
        if now - self.last_active > rules.idle_timeout and self.waiting_on_peer():
            self.close()

    def _of_length(self) -> str:
        return f" of {self.content_length}" if self.content_length >= 0 else ""

    def request_timed_out(self, detail: str) -> None:
        """A request head or body stalled: 408 (after the responses owed before it), close."""
        self.error_detail = detail
        self.http_error(408)
        try:
            self.settle()
        except TLSFailure:
            self.abort()

    # -- identity --------------------------------------------------------------------------------

    @property
    def identity(self) -> PeerIdentity | None:
        """The verified client, parsed on first use and cached for the connection."""
        if self._identity is None and self.session is not None:
            der = self.session.peer_certificate_der()
            if der:
                self._identity = identity_of(der)
        return self._identity

    def access_allowed(self) -> bool:
        """Apply --allow-cn/--allow-san once per connection; log a refusal once."""
        ident = self.identity
        allowed = ident is not None and self.rules.policy.allows(ident)
        if not allowed:
            who = ident.describe() if ident else "a client without certificate"
            log.warning(
                "refused %s from %s: no --allow-cn/--allow-san rule matches",
                who,
                self.peer_text(),
            )
        self.allowed = allowed
        return allowed

    def refuse(self) -> None:
        self.server_state.stats.requests_refused += 1
        self.in_request = False
        self.write(RESPONSE_403)
        self.close_after_response()

    def log_request(self, method: bytes) -> None:
        ident = self.identity
        who = ident.describe() if ident else "-"
        # The parser refuses control characters in the target; escape the rest.
        path = self.url[:200].decode("ascii", "backslashreplace")
        log.info("new request %s %s from %s", method.decode("ascii", "replace"), path, who)

    # -- lifecycle hooks --------------------------------------------------------------------------

    def responses_owed(self) -> bool:
        """True while a parsed request still waits for (the end of) its response."""
        return False

    def idle(self) -> bool:
        """True between requests (no request read, no response owed)."""
        return not self.in_request and not self._out and not self.responses_owed()

    def waiting_on_peer(self) -> bool:
        """True when only the peer can move this connection on (no response owed): the
        idle timeout applies (a request begun has its own, check_timeouts)."""
        return not self.responses_owed()

    def shutdown_if_idle(self) -> None:
        """Graceful shutdown: close idle connections now, busy ones after their response."""
        if self.closed:
            return
        if self.handshaking or self.idle():
            self.close()
        else:
            self.close_after_response()

    def lost(self) -> None:
        """The connection is gone (subclasses release what they hold)."""

    @property
    def peer(self) -> tuple[str, int] | None:
        """The client's address, asked of the socket on first use (not per connection)."""
        if self._peer is None and self.transport is not None:
            self._peer = self.transport.get_extra_info("peername")
        return self._peer

    def peer_text(self) -> str:
        peer = self.peer
        return f"{peer[0]}:{peer[1]}" if peer else "?"


class HelloProtocol(BaseProtocol):
    """The seed's app: 200 ``hello world \\n`` for any path and method, from the callbacks."""

    def __init__(
        self,
        server_state: ServerState,
        rules: ConnectionRules,
        tls: TLSState,
        responses: HelloResponses,
    ) -> None:
        super().__init__(server_state, rules, tls)
        self.responses = responses

    def refuse_upgrade(self) -> None:
        if self._out:  # the response to the upgrade request is the last one queued
            r = self.responses
            swap = {r.keep: r.close, r.head_keep: r.head_close}
            self._out[-1] = swap.get(self._out[-1], self._out[-1])

    limits_body = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count_header(name, value)

    def on_body(self, body: bytes) -> None:
        self.count_body(body)  # the hello world reads no body: only the limit applies

    def on_message_complete(self) -> None:
        self.in_request = False
        if self._close_after:
            return  # pipelined after "Connection: close" or an error: not answered
        if self.allowed is None:
            self.access_allowed()
        if not self.allowed:
            self.refuse()
            return
        server_state = self.server_state
        keep = self.parser.should_keep_alive() and not server_state.draining
        # Kept alive without a Connection field: HTTP/1.1, for llhttp keeps 1.0 (and the
        # 2.0 it reads) only when asked. Else the version decides (and may refuse: then
        # the refusal is the request's only log line).
        version = "1.1" if keep and not self.connection_field else self.check_version()
        server_state.stats.requests += 1
        method = self.parser.get_method()
        if not self.rules.quiet:
            self.log_request(method)
        r = self.responses
        if not keep:
            self.write(r.head_close if method == b"HEAD" else r.close)
            self.close_after_response()
        elif version == "1.1":
            self.write(r.head_keep if method == b"HEAD" else r.keep)
        else:  # an HTTP/1.0 client asked for keep-alive: say it is kept
            self.write(r.head_keep10 if method == b"HEAD" else r.keep10)
