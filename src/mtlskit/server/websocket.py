"""WebSocket (RFC 6455) for ASGI apps: the ``websocket`` scope over the server's TLS.

The frames are wsproto's (the sans-I/O library uvicorn uses), not a parser of ours:
:class:`WebSocketCycle` feeds it the handshake request and then the decrypted bytes,
turns its events into ASGI messages for the app and the app's messages into bytes that
the connection (:class:`mtlskit.server.asgi.ASGIProtocol`) encrypts and writes.

- The scope carries the same ``extensions["tls"]`` as ``http`` (the client's verified
  chain); ``--allow-cn/--allow-san`` apply before the app is called (403).
- ``websocket.close`` before ``websocket.accept`` answers 403; the app may also deny with
  its own response (the ``websocket.http.response`` extension). A message out of order
  or of the wrong type is an app error, logged once: a 500 while nothing was sent, else
  the denial response is cut (never finished by bytes of another meaning) or the
  WebSocket closed with 1011.
- Pings are answered; with ``--ws-ping-interval`` the server pings a quiet peer and
  drops it when no pong comes within ``--ws-ping-timeout`` (not while reading waits for
  the app: no pong could be read then).
- A message over ``--ws-max-size`` closes with 1009; a protocol error with 1002; the app
  gets ``websocket.disconnect`` with the code (1006 when the connection just went away).
- Backpressure both ways: reading pauses while the app has not taken what was received
  (:data:`HIGH_WATER`), and ``send()`` waits while the client does not read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from mtlskit.server.asgi_types import ASGIApp, ClientDisconnected, Scope, header_pair
from mtlskit.server.asgi_types import Message as ASGIMessage

__all__ = ["HIGH_WATER", "WebSocketCycle", "WebSocketLimits", "is_websocket_upgrade"]

log = logging.getLogger("mtlskit.server")

# Received bytes the app has not taken yet, beyond which reading pauses.
HIGH_WATER = 1 << 20
# After our close frame, how long the peer has to answer with its own.
_CLOSE_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_size: int  # bytes in one message
    ping_interval: float  # 0: the server does not ping
    ping_timeout: float


class Connection(Protocol):
    """What a WebSocket needs of its connection (ASGIProtocol is one)."""

    write_paused: bool

    def send_now(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def update_reading(self) -> None: ...

    def peer_text(self) -> str: ...


def is_websocket_upgrade(method: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """A GET that asks to upgrade to websocket (the handshake wsproto then checks)."""
    if method != b"GET":
        return False
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in value.lower()
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
    return upgrade and connection


class WebSocketCycle:
    """One WebSocket: the handshake, the messages both ways, the close."""

    def __init__(
        self, conn: Connection, scope: Scope, handshake: bytes, limits: WebSocketLimits, now: float
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.limits = limits
        self.ws = WSConnection(ConnectionType.SERVER)
        self.inbox: deque[tuple[ASGIMessage, int]] = deque()  # each with its size
        self.queued = 0  # bytes in the inbox
        self.event = asyncio.Event()
        self.accepted = False
        self.response_started = False  # a denial response began (or a 403/500 went out)
        self.response_complete = False  # the app's denial response ended
        self.error: RuntimeError | None = None  # the app broke the protocol
        self.closed = False  # no more frames either way: the app gets websocket.disconnect
        self.close_sent = 0.0  # when our close frame went out (waiting for the peer's)
        self.last_received = now
        self.ping_sent = 0.0
        self.now = now
        self._parts: list[str | bytes] = []
        self._size = 0
        self.feed(handshake)

    def describe(self) -> str:
        return f"WebSocket {self.scope['path'][:200]}"

    # -- from the client -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Decrypted bytes from the client (the handshake request first)."""
        if self.closed and self.ws.state is ConnectionState.CLOSED:
            return
        try:
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._handle(event)
        except RemoteProtocolError as exc:
            if not self.accepted:  # a broken handshake request: wsproto says which status
                hint = exc.event_hint
                status = hint.status_code if isinstance(hint, RejectConnection) else 400
                self._reject(status)
            else:
                self._fail(1002, f"protocol error: {exc}")

    def _handle(self, event: Event) -> None:
        self.last_received = self.now
        if isinstance(event, Request):
            self._put({"type": "websocket.connect"}, 0)
        elif isinstance(event, TextMessage):
            self._message(event.data, len(event.data.encode()), event.message_finished)
        elif isinstance(event, BytesMessage):
            self._message(bytes(event.data), len(event.data), event.message_finished)
        elif isinstance(event, Ping):
            self._write(self.ws.send(event.response()))
        elif isinstance(event, Pong):
            self.ping_sent = 0.0
        elif isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self._write(self.ws.send(event.response()))  # the answering close frame
            self._disconnected(event.code, event.reason or "")
            self.conn.close()

    def _message(self, part: str | bytes, size: int, finished: bool) -> None:
        """A frame of a text or binary message; the whole message goes to the app."""
        self._size += size
        if self._size > self.limits.max_size:
            self._fail(1009, f"a message over --ws-max-size ({self.limits.max_size} bytes)")
            return
        self._parts.append(part)
        if not finished:
            return
        parts, size, self._parts, self._size = self._parts, self._size, [], 0
        if isinstance(part, str):
            text = "".join(p for p in parts if isinstance(p, str))
            self._put({"type": "websocket.receive", "text": text}, size)
        else:
            data = b"".join(p for p in parts if isinstance(p, bytes))
            self._put({"type": "websocket.receive", "bytes": data}, size)

    def _put(self, message: ASGIMessage, size: int) -> None:
        self.inbox.append((message, size))
        self.queued += size
        self.event.set()
        if self.queued > HIGH_WATER:
            self.conn.update_reading()

    def _disconnected(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self._put({"type": "websocket.disconnect", "code": code, "reason": reason}, 0)

    def _fail(self, code: int, why: str) -> None:
        """Close with ``code`` because of the client (a protocol error, a message too big)."""
        log.info("closed %s from %s: %s (%d)", self.describe(), self.conn.peer_text(), why, code)
        self._send_close(code)
        self._disconnected(code)

    def lost(self) -> None:
        """The connection is gone."""
        self._disconnected(1006)

    def wants_read_pause(self) -> bool:
        return self.queued > HIGH_WATER

    # -- the clock (the worker's sweeper) ----------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        self.now = now
        limits = self.limits
        if self.close_sent:
            if now - self.close_sent > _CLOSE_WAIT:
                self.conn.close()  # the peer did not answer our close frame
            return
        if not self.accepted or self.closed or not limits.ping_interval:
            return
        if self.conn.write_paused:  # a pong would wait behind what the peer has not read:
            self.ping_sent = 0.0  # --write-timeout decides instead
            return
        if self.wants_read_pause():  # we read nothing until the app takes its messages,
            self.ping_sent = 0.0  # so no pong could come: the app's pace is not the peer's
            return
        if self.ping_sent:
            if now - self.ping_sent > limits.ping_timeout:
                log.info(
                    "closed %s from %s: no pong for %gs (--ws-ping-timeout)",
                    self.describe(),
                    self.conn.peer_text(),
                    limits.ping_timeout,
                )
                self._disconnected(1006)
                self.conn.abort()
        elif now - self.last_received > limits.ping_interval:
            self.ping_sent = now
            self._write(self.ws.send(Ping(b"mtlskit")))

    # -- the app -----------------------------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if exc is not self.error and not (  # (ours was logged where it was raised)
                self.closed and isinstance(exc, OSError | asyncio.CancelledError)
            ):
                log.error("exception in the ASGI app (%s)", self.describe(), exc_info=exc)
                self._app_ended(1011)
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        else:
            if self.error is None and not (self.accepted or self.closed):
                if self.response_started:
                    what = "before finishing its denial response"
                else:
                    what = "without accepting"
                log.error("the ASGI app returned %s (%s)", what, self.describe())
            self._app_ended(1000)

    def _app_ended(self, code: int) -> None:
        if self.closed or self.close_sent:
            return
        if self.accepted:
            self._send_close(code)
        elif not self.response_started:
            self._reject(500)
        else:  # a denial response the app did not finish: cut it, never leave it open
            self.conn.abort()
        self.closed = True

    def _error(self, text: str) -> RuntimeError:
        """The app broke the protocol: log it once; a 500 if nothing went out yet, else the
        denial response is cut or the WebSocket closed with 1011. Nothing more is written."""
        log.error("invalid response from the ASGI app (%s): %s", self.describe(), text)
        self.error = RuntimeError(text)
        self._app_ended(1011)
        return self.error

    async def receive(self) -> ASGIMessage:
        while not self.inbox:
            if self.closed:
                return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
            self.event.clear()
            await self.event.wait()
        message, size = self.inbox.popleft()
        if size:
            self.queued -= size
            if self.queued <= HIGH_WATER:
                self.conn.update_reading()
        if message["type"] == "websocket.disconnect":
            self.inbox.append((message, 0))  # and again for every later receive()
        return message

    async def send(self, message: ASGIMessage) -> None:
        conn = self.conn
        if conn.write_paused:
            await conn.drain()
        kind = message.get("type")
        if self.error is not None:
            raise RuntimeError(f"the response failed before: {self.error}")
        if self.response_complete:
            raise RuntimeError(f"{kind!r} sent after the denial response was complete")
        if self.closed or self.close_sent:
            raise ClientDisconnected("the WebSocket is closed")
        if not self.accepted and not self.response_started:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._reject(403)  # a close before the accept denies the handshake
            elif kind == "websocket.http.response.start":
                self._deny(message)
            else:
                raise self._error(
                    "expected 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
            return
        if self.response_started:
            self._deny_body(message)
            return
        if kind == "websocket.send":
            text, data = message.get("text"), message.get("bytes")
            if isinstance(text, str):
                self._write(self.ws.send(Message(data=text)))
            elif isinstance(data, bytes | bytearray):
                self._write(self.ws.send(Message(data=bytes(data))))
            else:
                raise self._error("websocket.send needs 'bytes' or 'text'")
        elif kind == "websocket.close":
            self._send_close(int(message.get("code") or 1000), str(message.get("reason") or ""))
            self._disconnected(int(message.get("code") or 1000))
        else:
            raise self._error(f"expected 'websocket.send' or 'websocket.close', got {kind!r}")

    def _accept(self, message: ASGIMessage) -> None:
        headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()]
        subprotocol = message.get("subprotocol")
        self._write(self.ws.send(AcceptConnection(subprotocol=subprotocol, extra_headers=headers)))
        self.accepted = True

    def _deny(self, message: ASGIMessage) -> None:
        """The head of the app's own denial response (websocket.http.response.start)."""
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise self._error(f"the status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 599:
            raise self._error(f"status {status} cannot deny a WebSocket handshake")
        headers = []
        for item in message.get("headers") or ():
            try:
                name, value = header_pair(item)
            except ValueError as exc:
                raise self._error(str(exc)) from None
            headers.append((bytes(name), bytes(value)))
        try:  # h11 (under wsproto) checks the names, values and framing fields
            data = self.ws.send(RejectConnection(status, headers=headers, has_body=True))
        except (h11.LocalProtocolError, LocalProtocolError) as exc:
            raise self._error(f"invalid denial response: {exc}") from None
        self.response_started = True
        self._write(data)

    def _deny_body(self, message: ASGIMessage) -> None:
        kind = message.get("type")
        if kind != "websocket.http.response.body":
            raise self._error(f"expected 'websocket.http.response.body', got {kind!r}")
        body = message.get("body", b"")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise self._error(f"the body must be bytes, not {type(body).__name__}")
        more = bool(message.get("more_body", False))
        try:  # h11 refuses more (or, at the end, less) body than a declared Content-Length
            data = self.ws.send(RejectData(data=bytes(body), body_finished=not more))
        except (h11.LocalProtocolError, LocalProtocolError) as exc:
            raise self._error(f"invalid denial response: {exc}") from None
        self._write(data)
        if not more:
            self.response_complete = self.closed = True
            self.conn.close()

    def _reject(self, status: int) -> None:
        """Answer the handshake with ``status`` and no body, then close."""
        self.response_started = True
        self.closed = True
        try:
            data = self.ws.send(
                RejectConnection(status, headers=[(b"content-length", b"0")], has_body=False)
            )
        except LocalProtocolError:  # the handshake request itself was unreadable
            data = b"HTTP/1.1 %d \r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
        self._write(data)
        self.conn.close()

    def _send_close(self, code: int, reason: str = "") -> None:
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(self.ws.send(CloseConnection(code=code, reason=reason or None)))
            self.close_sent = self.now or 1.0
        if self.ws.state is ConnectionState.CLOSED:
            self.conn.close()

    def going_away(self) -> None:
        """The server is shutting down: close 1001 (the app gets websocket.disconnect)."""
        if self.accepted and not self.closed:
            self._send_close(1001)
            self._disconnected(1001)
        elif not self.accepted and not self.response_started:
            self._reject(503)

    def _write(self, data: bytes) -> None:
        if data:
            self.conn.send_now(data)
