"""ASGI 3 hosting: http, websocket and lifespan scopes, with the ASGI TLS extension.

Every http and websocket scope carries ``scope["extensions"]["tls"]`` as the asgiref spec
"ASGI TLS Extension" 0.2 defines it: ``server_cert`` (PEM), ``client_cert_chain``
(PEM strings, leaf first), ``client_cert_name`` (RFC 4514), ``client_cert_error``
(None: unverified clients never get this far), ``tls_version`` (0x0304 …) and
``cipher_suite`` (the IANA number). They are computed once per connection.

Requests on one connection run one at a time, in order (pipelining queues them).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import re
import ssl
import sys
from collections import deque
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from mtlskit.errors import ConfigError, ServerError
from mtlskit.server.asgi_types import ASGIApp, ClientDisconnected, Message, Scope, header_pair
from mtlskit.server.protocol import ERROR_RESPONSES, BaseProtocol, identity_of
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import TLSState, cipher_suite_id, tls_version_id
from mtlskit.server.websocket import WebSocketCycle, is_websocket_upgrade

__all__ = [
    "ASGIApp",
    "ASGIProtocol",
    "ClientDisconnected",
    "HostedApp",
    "Lifespan",
    "RequestResponseCycle",
    "load_app",
]

log = logging.getLogger("mtlskit.server")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

# Buffer at most this much request body before pausing the socket (the app reads slower).
_BODY_HIGH_WATER = 64 * 1024
# At most this many pipelined requests waiting on one connection before pausing it.
_PIPELINE_MAX = 16

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Section 5.5: a field value has no control character but HTAB (obs-text is allowed).
# Leading and trailing whitespace, which recipients strip, is let through (as uvicorn).
_NOT_FIELD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Response header fields found valid, and their line: (name, value) -> b"name: value\r\n".
# Only ordinary fields (not Content-Length, Transfer-Encoding, Connection, Date, which
# change the framing), as immutable bytes tuples.
_HEADER_LINES: dict[tuple[bytes, bytes], bytes] = {}
# Content-Length fields found valid: (name, value) -> (line, the length).
_LENGTH_LINES: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}


def load_app(spec: str) -> ASGIApp:
    """Import ``module:attribute`` (attribute may be dotted), from the current folder too."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"APP must be module:attribute, not {spec!r}", hint="e.g. mtlskit serve myapp:app"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import {module_name!r}: no such module",
                hint="run from the folder that has it, or set PYTHONPATH",
            ) from None
        raise ServerError(
            f"cannot import {module_name!r}: {exc}", hint="install what the app needs"
        ) from None
    except Exception as exc:
        raise ServerError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
            hint="fix the app's module",
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r}",
                hint="name the ASGI app object, e.g. module:app",
            ) from None
    if not callable(obj):
        raise ConfigError(f"{spec} is not callable", hint="name an ASGI 3 application")
    app: ASGIApp = obj
    return app


# PEM of the client certificates seen lately (DER -> PEM), for the TLS extension. Bounded.
_pem = functools.lru_cache(maxsize=1024)(ssl.DER_cert_to_PEM_cert)


class HostedApp:
    """The ASGI app one worker runs: the callable, its requests still running, and the
    lifespan state (each request's scope gets a shallow copy, as the spec says)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[None]] = set()
        self.lifespan_state: dict[str, Any] = {}

    def start_request(self, cycle: RequestResponseCycle | WebSocketCycle) -> None:
        self.tasks.add(asyncio.get_running_loop().create_task(self._serve(cycle)))

    def start_request_now(self, cycle: RequestResponseCycle) -> None:
        """Run the app at once, up to its first wait, where most small apps have sent
        their whole response: no loop iteration between a request and its response.
        Python 3.12+ (an eager task, which is the app's task from its first step, as
        anyio and Starlette need); older Pythons schedule the task as usual."""
        if sys.version_info >= (3, 12):
            loop = asyncio.get_running_loop()
            task = asyncio.Task(cycle.run(self.app), loop=loop, eager_start=True)
            if not task.done():  # it waits: kept until done (most are done already)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        else:
            self.start_request(cycle)

    async def _serve(self, cycle: RequestResponseCycle | WebSocketCycle) -> None:
        try:
            await cycle.run(self.app)
        finally:  # (cheaper than a done callback, which costs a turn of the loop)
            task = asyncio.current_task()
            if task is not None:
                self.tasks.discard(task)

    async def wait_requests(self, timeout: float) -> None:
        """Let the running requests finish, for at most ``timeout`` seconds."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)


class Lifespan:
    """The lifespan scope: startup before serving, shutdown after draining."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.supported = True
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self._started.is_set():
                # An app without lifespan support raises on the unknown scope type.
                self.supported = False
                log.debug("lifespan not supported by the app: %r", exc)
            else:
                log.error("ASGI lifespan failed: %s: %s", type(exc).__name__, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._started.set()
            self._stopped.set()

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if kind == "lifespan.startup.failed":
                self._failure = str(message.get("message") or "startup failed")
            self._started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind == "lifespan.shutdown.failed":
                log.error("ASGI shutdown failed: %s", message.get("message", ""))
            self._stopped.set()

    async def startup(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started.wait()
        if self._failure is not None:
            raise ServerError(f"the app's startup failed: {self._failure}", hint="fix the app")

    async def shutdown(self) -> None:
        if self._task is None or not self.supported or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._stopped.wait()


class RequestResponseCycle:
    """One request and its response, which it frames and checks.

    What the app sends is checked before a byte of it is written (uvicorn's checks are
    the floor): a status outside 200-599 (a 1xx cannot be the response), header names
    that are not RFC 9110 tokens, values with control characters, a Content-Length that
    is not a number, a body that is not bytes, more body than the Content-Length the app
    declared or less when it ends. Each is an error raised to the app and logged once
    with the request; the client gets a 500 if nothing was sent yet, else the
    connection is aborted: never bytes that could read as another response.
    """

    __slots__ = (
        "_has_date",
        "_has_length",
        "_head",
        "body",
        "body_size",
        "chunked",
        "complete",
        "disconnected",
        "error",
        "event",
        "expect_continue",
        "final_sent",
        "head_request",
        "head_sent",
        "http10",
        "keep_alive",
        "proto",
        "remaining",
        "response_complete",
        "response_started",
        "scope",
        "sends_body",
        "status",
    )

    def __init__(self, proto: ASGIProtocol, scope: Scope, keep_alive: bool, expect: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.head_request = scope["method"] == "HEAD"
        self.http10 = scope["http_version"] == "1.0"
        self.body: list[bytes] = []
        self.body_size = 0
        self.complete = False  # the whole request body has been parsed
        self.final_sent = False  # receive() returned the last http.request
        self.disconnected = False
        self.response_started = False  # http.response.start came
        self.head_sent = False  # the response head went out
        self.response_complete = False
        self.sends_body = True  # False: HEAD, 204, 304
        self.chunked = False
        self.status = 0
        self.remaining = -1  # body bytes still owed to a Content-Length the app declared
        self.error: RuntimeError | None = None  # the app broke the protocol
        self.event: asyncio.Event | None = None  # made when receive() first has to wait
        self._head: list[bytes] | None = None
        self._has_date = False
        self._has_length = False

    def describe(self) -> str:
        """``GET /path?query`` as the request log line shows it."""
        target = self.scope["raw_path"]
        if self.scope["query_string"]:
            target += b"?" + self.scope["query_string"]
        return f"{self.scope['method']} {target[:200].decode('ascii', 'backslashreplace')}"

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if self.disconnected and isinstance(exc, OSError | asyncio.CancelledError):
                return  # the client went away (ClientDisconnected): not worth a log line
            if exc is not self.error:  # ours was logged where it was raised
                # The app's own bug: its traceback is for its developer (no peer bytes in it).
                log.error("exception in the ASGI app (%s)", self.describe(), exc_info=exc)
            self._fail()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
        else:
            if self.disconnected or self.response_complete:
                return
            if self.error is None:
                what = "before finishing" if self.response_started else "without sending"
                log.error("the ASGI app returned %s a response (%s)", what, self.describe())
            self._fail()

    def _fail(self) -> None:
        """The response cannot be completed: a 500 while nothing was sent, else abort."""
        if self.disconnected or self.response_complete:
            return
        if self.head_sent:
            self.response_complete = True
            self.proto.abort()
            return
        body = b"internal server error\n"
        self.keep_alive = False
        self.response_started = self.head_sent = True
        self.proto.send_now(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        self._finish()

    def _error(self, text: str) -> RuntimeError:
        """The app broke the protocol: log it once, with the request, and fail the response."""
        log.error("invalid response from the ASGI app (%s): %s", self.describe(), text)
        self.error = RuntimeError(text)
        return self.error

    async def receive(self) -> Message:
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if self.final_sent:
            # The whole body was delivered: what comes next is the disconnect.
            while not (self.disconnected or self.response_complete):
                await self._wait()
            return {"type": "http.disconnect"}
        if self.expect_continue and not self.complete:
            self.expect_continue = False
            self.proto.send_now(_CONTINUE)
        while not self.body and not self.complete and not self.disconnected:
            await self._wait()
        if self.disconnected:
            return {"type": "http.disconnect"}
        data = b"".join(self.body)
        self.body.clear()
        self.body_size = 0
        self.final_sent = self.complete
        self.proto.body_consumed()
        return {"type": "http.request", "body": data, "more_body": not self.complete}

    async def _wait(self) -> None:
        """Until the parser or the connection has news for receive()."""
        if self.event is None:
            self.event = asyncio.Event()
        self.event.clear()
        await self.event.wait()

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()

    async def send(self, message: Message) -> None:
        proto = self.proto
        if proto.write_paused:
            await proto.drain()
        if self.disconnected:
            # ASGI spec: send() on a closed connection raises an OSError subclass.
            raise ClientDisconnected("the client disconnected")
        if self.error is not None:
            raise RuntimeError(f"the response failed before: {self.error}")
        kind = message.get("type")
        if not self.response_started:
            if kind != "http.response.start":
                raise self._error(f"expected 'http.response.start', got {kind!r}")
            self._start(message)
            self.response_started = True
            return
        if self.response_complete:
            raise RuntimeError(f"{kind!r} sent after the response was complete")
        if kind != "http.response.body":
            raise self._error(f"expected 'http.response.body', got {kind!r}")
        body = message.get("body", b"")
        if not isinstance(body, bytes):
            if not isinstance(body, bytearray | memoryview):
                raise self._error(f"the body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        more = bool(message.get("more_body", False))
        out = []
        if self._head is not None:
            out.append(self._finish_head(len(body), more))
        if self.sends_body:
            if self.remaining >= 0:
                if len(body) > self.remaining:
                    raise self._error(
                        "the body is longer than its Content-Length "
                        f"({self.remaining} bytes were left, {len(body)} sent)"
                    )
                self.remaining -= len(body)
                if not more and self.remaining:
                    raise self._error(
                        f"the body ended {self.remaining} bytes short of its Content-Length"
                    )
            if body:
                out.append(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
            if not more and self.chunked:
                out.append(b"0\r\n\r\n")
        if out:
            self.head_sent = True
            proto.send_now(b"".join(out))
        if not more:
            self._finish()

    def _start(self, message: Message) -> None:
        status = message.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise self._error(f"the status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 599:
            raise self._error(
                f"status {status} cannot be a response"
                + (" (1xx statuses are informational)" if 100 <= status < 200 else "")
            )
        self.status = status
        lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        for item in message.get("headers", ()):
            try:
                line = _HEADER_LINES.get(item)
            except TypeError:  # a list, or bytearrays: not a cache key
                line = None
            if line is not None:  # the same (name, value) checked before: most apps
                lines.append(line)
                continue
            try:
                known = _LENGTH_LINES.get(item)
            except TypeError:
                known = None
            if known is not None:  # a Content-Length seen before
                if self.remaining >= 0:
                    if known[1] != self.remaining:
                        raise self._error("two different Content-Length headers")
                    continue
                lines.append(known[0])
                self.remaining = known[1]
                self._has_length = True
                continue
            try:
                name, value = header_pair(item)
            except ValueError as exc:
                raise self._error(str(exc)) from None
            if not _TOKEN.fullmatch(name):
                raise self._error(f"invalid header name {bytes(name)!r}")
            if _NOT_FIELD_VALUE.search(value):
                raise self._error(f"invalid value of header {bytes(name).decode()!r}")
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    raise self._error(f"invalid Content-Length {bytes(value)!r}")
                declared = int(value)
                if self.remaining >= 0:
                    if declared != self.remaining:
                        raise self._error("two different Content-Length headers")
                    continue
                self.remaining = declared
                self._has_length = True
            elif lower == b"transfer-encoding":
                continue  # the server chooses the framing
            elif lower == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            elif lower == b"date":
                self._has_date = True
            line = b"%s: %s\r\n" % (name, value)
            lines.append(line)
            if lower != b"date" and type(item) is tuple and type(name) is type(value) is bytes:
                length = lower == b"content-length"
                cache: dict[Any, Any] = _LENGTH_LINES if length else _HEADER_LINES
                if len(cache) >= 1024:
                    cache.clear()  # a bound, not an LRU: apps repeat a few
                cache[item] = (line, self.remaining) if length else line
        self._head = lines
        self.sends_body = not self.head_request and status not in _NO_BODY_STATUS
        if not self.sends_body:
            self.remaining = -1  # the length describes a body that is not sent

    def _finish_head(self, first_len: int, more: bool) -> bytes:
        lines = self._head or []
        self._head = None
        server_state = self.proto.server_state
        if not self._has_date:
            lines.insert(1, b"Date: %s\r\n" % server_state.date)
        if self.status not in _NO_BODY_STATUS and not self._has_length:
            if not more:
                lines.append(b"Content-Length: %d\r\n" % first_len)
            elif self.http10:
                # HTTP/1.0 has no chunked encoding: the body ends with the connection.
                self.keep_alive = False
            else:
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive or server_state.draining:
            self.keep_alive = False
            lines.append(b"Connection: close\r\n")
        elif self.http10:
            lines.append(b"Connection: keep-alive\r\n")  # 1.0 keeps only when told
        lines.append(b"\r\n")
        return b"".join(lines)

    def _finish(self) -> None:
        self.response_complete = True
        self.wake()
        self.proto.response_complete(self)

    def abandon(self) -> None:
        """The request cannot be read to its end (a framing error, a timeout, the client
        left): the app's receive() says http.disconnect, its send() raises."""
        self.disconnected = True
        self.wake()


class ASGIProtocol(BaseProtocol):
    """HTTP/1.1 for an ASGI app: one :class:`RequestResponseCycle` per request, in order."""

    limits_body = True

    def __init__(
        self, server_state: ServerState, rules: ConnectionRules, tls: TLSState, hosted: HostedApp
    ) -> None:
        super().__init__(server_state, rules, tls)
        self.hosted = hosted
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect = self.upgrade = False
        self.cycles: deque[RequestResponseCycle] = (
            deque()
        )  # the running one first, then queued ones
        self.parsing: RequestResponseCycle | None = None
        self.pending_error = 0
        self.websocket: WebSocketCycle | None = None
        # A WebSocket handshake parsed while earlier requests still run: (scope, request).
        self._ws_request: tuple[Scope, bytes] | None = None
        self._tls_ext: dict[str, Any] | None = None
        self._server_addr: tuple[str, int] | None = None
        self._scope_base: dict[str, Any] | None = None
        self._feeding = False  # in the parser's callbacks: the app starts after them
        self._starting: RequestResponseCycle | None = None

    # -- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.headers = []
        self.expect = self.upgrade = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.count_header(name, value):
            return  # a trailer field: not merged into the request's headers
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        elif name == b"upgrade":
            self.upgrade = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        if keep_alive and not self.connection_field:
            self.http_version = "1.1"  # llhttp keeps 1.0 (and the 2.0 it reads) only when asked
        else:
            self.check_version()
        if self.allowed is None and not self.access_allowed():
            self.refuse()
            return
        target = self.url
        if target[:1] == b"/" and not (b"?" in target or b"%" in target or b"#" in target):
            raw_path, query, path = target, b"", target.decode("latin-1")  # the usual "/x"
        else:
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                self.stop(400, "invalid request target")
            raw_path, query = url.path or b"/", url.query or b""
            path = unquote(raw_path.decode("latin-1"))
        method = parser.get_method()
        base: dict[str, Any] | None = self._scope_base
        if base is None:  # what every request of this connection shares, made once
            base = self._scope_base = {
                "type": "http",
                "asgi": ASGI_VERSION,
                "server": self._server(),
                "client": self.peer[:2] if self.peer else None,
                "scheme": "https",
                "root_path": "",
            }
        scope: Scope = base.copy()
        scope["http_version"] = self.http_version
        scope["method"] = method.decode("ascii")
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = self.headers
        scope["state"] = self.hosted.lifespan_state.copy()
        scope["extensions"] = {"tls": self.tls_extension()}
        if self.upgrade and parser.should_upgrade() and is_websocket_upgrade(method, self.headers):
            self._websocket_requested(scope)
            return
        cycle = RequestResponseCycle(self, scope, keep_alive, self.expect)
        self.parsing = cycle
        self.cycles.append(cycle)
        if len(self.cycles) == 1:
            self._run(cycle)
        elif len(self.cycles) > _PIPELINE_MAX:
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        self.count_body(body)
        c = self.parsing
        if c is None or c.response_complete or c.disconnected:
            return  # nobody will read it
        c.body.append(body)
        c.body_size += len(body)
        c.wake()
        if c.body_size > _BODY_HIGH_WATER:
            self.update_reading()

    def on_message_complete(self) -> None:
        self.in_request = False
        c = self.parsing
        if c is not None:
            c.complete = True
            c.wake()
            self.parsing = None

    # -- WebSocket -------------------------------------------------------------------------------------

    def _websocket_requested(self, scope: Scope) -> None:
        """The head of a WebSocket handshake: its scope, until the parser hands over."""
        del scope["method"]
        scope["type"] = "websocket"
        scope["scheme"] = "wss"
        scope["subprotocols"] = [
            p.strip().decode("latin-1")
            for name, value in self.headers
            if name == b"sec-websocket-protocol"
            for p in value.split(b",")
            if p.strip()
        ]
        scope["extensions"]["websocket.http.response"] = {}
        head = [b"GET %s HTTP/1.1\r\n" % self.url]
        head += [b"%s: %s\r\n" % (name, value) for name, value in self.headers]
        self._ws_request = (scope, b"".join(head) + b"\r\n")

    def upgrade_requested(self, rest: bytes) -> None:
        if self._ws_request is None:  # another protocol (h2c …), or a refused client
            super().upgrade_requested(rest)
            return
        if self.cycles:  # answer the requests before it first (response_complete)
            scope, request = self._ws_request
            self._ws_request = (scope, request + rest)
            self.update_reading()
            return
        self._start_websocket(rest)

    def _start_websocket(self, rest: bytes) -> None:
        assert self._ws_request is not None
        scope, request = self._ws_request
        self._ws_request = None
        self.server_state.stats.requests += 1
        if not self.rules.quiet:
            self.log_request(b"GET")
        ws = WebSocketCycle(self, scope, request, self.rules.websocket, self.server_state.now)
        self.websocket = ws
        if not ws.closed:  # wsproto accepted the handshake request
            self.hosted.start_request(ws)
        if rest:
            ws.feed(rest)

    def received(self, plain: bytes) -> None:
        ws = self.websocket
        if ws is None:
            self._feeding = True
            try:
                super().received(plain)
            finally:
                self._feeding = False
            cycle, self._starting = self._starting, None
            # (A request whose body broke in this chunk runs too: its receive() says
            # http.disconnect, as for a body that breaks later.)
            if cycle is not None and (
                cycle.disconnected or (self.cycles and self.cycles[0] is cycle)
            ):
                self._begin(cycle)
                self.hosted.start_request_now(cycle)
            return
        ws.now = self.server_state.now
        ws.feed(plain)

    def check_timeouts(self, now: float) -> None:
        super().check_timeouts(now)
        if self.websocket is not None and not self.closed:
            self.websocket.check_timeouts(now)

    def shutdown_if_idle(self) -> None:
        if self.websocket is not None and not self.closed:
            self.websocket.going_away()
            return
        super().shutdown_if_idle()

    # -- requests -----------------------------------------------------------------------------------

    def _run(self, cycle: RequestResponseCycle) -> None:
        if self._feeding:
            self._starting = cycle
            return
        self._begin(cycle)
        self.hosted.start_request(cycle)

    def _begin(self, cycle: RequestResponseCycle) -> None:
        self.server_state.stats.requests += 1
        if not self.rules.quiet:
            self.log_request(cycle.scope["method"].encode())

    def response_complete(self, cycle: RequestResponseCycle) -> None:
        self.last_active = self.server_state.now
        if self.cycles and self.cycles[0] is cycle:
            self.cycles.popleft()
        if not cycle.keep_alive or self.server_state.draining:
            self.close()
            return
        if self.cycles:
            self._run(self.cycles[0])
        elif self._ws_request is not None:
            self._start_websocket(b"")
            self.update_reading()
            return
        elif self.pending_error:
            self.send_now(ERROR_RESPONSES[self.pending_error])
            self.close()
            return
        elif self._close_after and not self.in_request:
            self.close()
            return
        if self.read_paused:
            self.update_reading()

    def responses_owed(self) -> bool:
        return bool(self.cycles) or self._ws_request is not None

    def waiting_on_peer(self) -> bool:
        # No request in the app, or the app waits for the body of the one it runs. A
        # WebSocket may be quiet: its pings tell whether the peer is there.
        if self.websocket is not None:
            return False
        return not self.cycles or self.parsing is self.cycles[0]

    def refuse_upgrade(self) -> None:
        if self.cycles:
            self.cycles[-1].keep_alive = False

    def http_error(self, status: int) -> None:
        """A request that cannot be served: the requests before it are answered in order,
        then this error, then the connection closes. When the request is one the app
        already runs (its body broke, was too large or stalled), the app's receive()
        gets http.disconnect and the error goes out at once, or, if the app's response
        has begun, the connection is aborted."""
        c, self.parsing = self.parsing, None
        if c is not None and c.response_complete:  # answered already: just stop reading
            self.log_http_error(status)
            self.in_request = False
            self.close_after_response()
            return
        if c is not None and c in self.cycles:
            c.abandon()
            if c is self.cycles[0]:
                self.cycles.popleft()
                if c.head_sent:
                    self.log_http_error(status)
                    self.abort()
                    return
            else:
                self.cycles.remove(c)  # queued: the app never saw it
        if not self.cycles:
            super().http_error(status)
            return
        self.log_http_error(status)
        self.in_request = False
        self.pending_error = status
        self.close_after_response()

    def body_consumed(self) -> None:
        if self.read_paused:
            self.update_reading()

    def wants_read_pause(self) -> bool:
        parsing = self.parsing
        return (
            self.write_paused
            or len(self.cycles) > _PIPELINE_MAX
            or (parsing is not None and parsing.body_size > _BODY_HIGH_WATER)
            or self._ws_request is not None  # nothing is read until the switch
            or (self.websocket is not None and self.websocket.wants_read_pause())
        )

    def lost(self) -> None:
        for c in self.cycles:
            c.abandon()
        if self.websocket is not None:
            self.websocket.lost()

    # -- scope ----------------------------------------------------------------------------------------

    def _server(self) -> tuple[str, int] | None:
        if self._server_addr is None and self.transport is not None:
            sock = self.transport.get_extra_info("sockname")
            self._server_addr = (str(sock[0]), int(sock[1])) if sock else None
        return self._server_addr

    def tls_extension(self) -> dict[str, Any]:
        """The ASGI TLS extension for this connection (computed on first use)."""
        if self._tls_ext is None:
            session = self.session
            assert session is not None and self.tls is not None
            chain = session.peer_chain_der()
            if self._identity is None and chain:
                self._identity = identity_of(chain[0])  # the leaf: no second look-up
            ident = self._identity
            self._tls_ext = {
                "server_cert": self.tls.server_cert_pem or None,
                "client_cert_chain": [_pem(d) for d in chain],
                "client_cert_name": ident.subject if ident else None,
                "client_cert_error": None,
                "tls_version": tls_version_id(session.version()),
                "cipher_suite": cipher_suite_id(session.cipher()),
            }
        ext = dict(self._tls_ext)
        ext["client_cert_chain"] = list(ext["client_cert_chain"])
        return ext
