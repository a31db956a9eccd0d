"""Property-based tests of the request path (issue 10, item 7), with hypothesis.

The server's own protocol objects (HelloProtocol, ASGIProtocol) run in process on a
real event loop and a real TLS engine; a client ``ssl.SSLObject`` over memory buffers
talks to them. Each chunk the client writes is its own TLS record and its own
``data_received``, so the HTTP parser sees exactly the split the test chose, down to
one byte at a time. Only the socket is a stand-in (it records what would be sent).

- Valid requests, pipelined, give the same responses whole or split at every byte
  boundary (and at generated points), in both modes.
- Malformed heads and bodies always end in 400/431/413 (408 for a stall, once the
  timeout has passed) and a closed connection, never a hang or a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mtlskit.server.asgi import ASGIProtocol, HostedApp
from mtlskit.server.config import ServerConfig
from mtlskit.server.protocol import BaseProtocol, HelloProtocol, HelloResponses
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.stats import Stats
from mtlskit.server.tlsstate import TLSState, build_state
from tests.support.server import client_ctx, make_pki

MAX_BODY = 4096
CONFIG = ServerConfig(quiet=True, max_body_size=MAX_BODY, max_header_bytes=4096, max_headers=20)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def tls_state(pki: Path) -> TLSState:
    return build_state(pki / "server.crt", pki / "server.key", pki / "ca.crt")


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the request was, as the app saw it: method, target, headers, body."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = b";".join(b"%s=%s" % h for h in scope["headers"] if h[0] != b"content-length")
    out = b"%s %s?%s [%s] %s\r\n" % (
        scope["method"].encode(),
        scope["raw_path"],
        scope["query_string"],
        headers,
        body.hex().encode(),  # no status line can hide in it
    )
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": out})


class Socket(asyncio.Transport):
    """The stand-in for the TCP socket: keeps what the server writes, reports the close."""

    def __init__(self, protocol: BaseProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.sent += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False  # a lingering close then closes at once

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8443)}.get(
            name, default
        )


class Client:
    """One TLS client connection to a protocol object, over memory buffers."""

    def __init__(self, protocol: BaseProtocol, ctx: ssl.SSLContext) -> None:
        self.protocol = protocol
        self.socket = Socket(protocol)
        self.into, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.into, self.out, server_hostname="localhost")
        protocol.connection_made(self.socket)
        self.received = b""
        self.eof = False

    def _pump(self) -> None:
        if self.out.pending:
            self.protocol.data_received(self.out.read())
        if self.socket.sent:
            self.into.write(bytes(self.socket.sent))
            self.socket.sent.clear()

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pump()
        self._pump()

    def send(self, data: bytes) -> None:
        """``data`` as one TLS record, delivered as one read of the socket."""
        self.tls.write(data)
        self._pump()

    def read(self) -> None:
        self._pump()
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self.received += chunk
        if self.socket.closed:
            self.eof = True


def make_protocol(mode: str, tls: TLSState, now: float = 0.0) -> tuple[BaseProtocol, ServerState]:
    state = ServerState(Stats())
    state.date = b"Sun, 01 Nov 2026 00:00:00 GMT"  # the same in every exchange compared
    rules = ConnectionRules.from_config(CONFIG)
    if mode == "hello":
        return HelloProtocol(state, rules, tls, HelloResponses(state.date)), state
    return ASGIProtocol(state, rules, tls, HostedApp(echo_app)), state


async def _settle(client: Client, done: Callable[[], bool]) -> None:
    for _ in range(200):  # the app runs in tasks: let them, until nothing changes
        await asyncio.sleep(0)
        client.read()
        if done():
            return


def exchange(
    mode: str,
    tls: TLSState,
    ctx: ssl.SSLContext,
    chunks: list[bytes],
    expect: int,
    advance: float = 0.0,
) -> tuple[bytes, bool]:
    """Feed ``chunks`` (each its own record); the plaintext that came back, and whether
    the server closed. ``advance``: then let this many seconds pass on the server's clock
    (its sweeper's view: check_timeouts) and look again."""

    async def run() -> tuple[bytes, bool]:
        protocol, state = make_protocol(mode, tls)
        client = Client(protocol, ctx)
        client.handshake()
        for chunk in chunks:
            client.send(chunk)
            await asyncio.sleep(0)
        await _settle(client, lambda: client.received.count(b"HTTP/1.1 ") >= expect)
        if advance:
            state.now += advance
            protocol.check_timeouts(state.now)
            await _settle(client, lambda: client.eof)
        await _settle(client, lambda: False)  # anything more would show now
        with contextlib.suppress(Exception):
            protocol.connection_lost(None)
        return client.received, client.eof

    return asyncio.run(run())


def splits(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(cuts) if b > a]


# -- generated requests ------------------------------------------------------------------

TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12
)
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;,=/.:_-", max_size=30).map(str.strip)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/%", max_size=20).map(
    lambda p: "/" + p.replace("%", "%25")
)
RESERVED = {"content-length", "transfer-encoding", "connection", "expect", "upgrade", "host"}


@st.composite
def request(draw: st.DrawFn, last: bool = False) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    path = draw(PATH)
    query = draw(st.text("abc=&123", max_size=10))
    fields = draw(
        st.lists(
            st.tuples(TOKEN.filter(lambda n: n.lower() not in RESERVED), VALUE),
            max_size=4,
            unique_by=lambda f: f[0].lower(),
        )
    )
    head = f"{method} {path}{'?' + query if query else ''} HTTP/1.1\r\nHost: x\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in fields)
    body = draw(st.binary(max_size=300)) if method != "GET" else b""
    if last:
        head += "Connection: close\r\n"
    if body and draw(st.booleans()):  # chunked, in generated pieces
        sizes = draw(st.lists(st.integers(1, 64), min_size=1, max_size=8))
        out, rest = b"", body
        for size in sizes:
            piece, rest = rest[:size], rest[size:]
            if piece:
                out += b"%x\r\n%s\r\n" % (len(piece), piece)
        if rest:
            out += b"%x\r\n%s\r\n" % (len(rest), rest)
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + out + b"0\r\n\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


@st.composite
def pipeline(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(1, 4))
    return [draw(request()) for _ in range(n - 1)] + [draw(request(last=True))]


@pytest.mark.parametrize("mode", ["asgi", "hello"])
@SETTINGS
@given(requests=pipeline(), points=st.lists(st.integers(0, 10_000), max_size=6))
def test_valid_requests_split_anywhere_give_the_same_responses(
    mode: str, tls_state: TLSState, pki: Path, requests: list[bytes], points: list[int]
) -> None:
    ctx = client_ctx(pki)
    data = b"".join(requests)
    n = len(requests)
    whole, closed = exchange(mode, tls_state, ctx, [data], n)
    assert whole.count(b"HTTP/1.1 200 OK\r\n") == n, whole
    assert closed  # the last one said Connection: close
    bytewise, _ = exchange(mode, tls_state, ctx, [data[i : i + 1] for i in range(len(data))], n)
    assert bytewise == whole
    pieces, _ = exchange(mode, tls_state, ctx, splits(data, points), n)
    assert pieces == whole


# -- malformed requests ------------------------------------------------------------------------

CTL = st.sampled_from([bytes([c]) for c in [*range(0, 9), *range(11, 13), *range(14, 32), 127]])


@st.composite
def malformed(draw: st.DrawFn) -> tuple[bytes, set[int], float]:
    """A request the server must refuse: (bytes, statuses allowed, seconds to wait)."""
    good = draw(request())
    head, _, body = good.partition(b"\r\n\r\n")
    kind = draw(
        st.sampled_from(
            [
                "ctl-in-head",
                "bad-chunk-size",
                "head-too-large",
                "too-many-fields",
                "body-too-large",
                "chunked-too-large",
                "stalled-head",
                "stalled-body",
                "bad-version",
                "bad-content-length",
            ]
        )
    )
    if kind == "ctl-in-head":
        at = draw(st.integers(0, len(head) - 1))
        assume(head[at : at + 1] not in (b"\r", b"\n"))
        return head[:at] + draw(CTL) + head[at:] + b"\r\n\r\n" + body, {400}, 0.0
    if kind == "bad-chunk-size":
        size = draw(
            st.text("xyz-+ g0x\t", min_size=1, max_size=6).filter(lambda s: s.strip("0") != "")
        )
        assume(not all(c in "0123456789abcdefABCDEF" for c in size))
        req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        return req + size.encode() + b"\r\nabc\r\n0\r\n\r\n", {400}, 0.0
    if kind == "head-too-large":
        big = b"X-Big: " + b"a" * draw(st.integers(4100, 9000)) + b"\r\n"
        return b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", {431}, 0.0
    if kind == "too-many-fields":
        fields = b"".join(b"X-%d: v\r\n" % i for i in range(draw(st.integers(21, 60))))
        return b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", {431}, 0.0
    if kind == "body-too-large":
        n = draw(st.integers(MAX_BODY + 1, 10**12))
        return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n, {413}, 0.0
    if kind == "chunked-too-large":
        piece = b"a" * 1000
        chunks = b"%x\r\n%s\r\n" % (len(piece), piece) * draw(st.integers(5, 8))
        req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        return req + chunks, {413}, 0.0
    if kind == "stalled-head":
        cut = draw(st.integers(1, len(head)))
        return head[:cut], {408}, CONFIG.head_timeout + 1
    if kind == "stalled-body":
        missing = draw(st.integers(1, 100))
        req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(body) + missing)
        return req + body, {408}, CONFIG.body_timeout + 1
    if kind == "bad-version":
        version = draw(st.sampled_from([b"HTTP/2.0", b"HTTP/1.x", b"HTTQ/1.1", b"HTTP/11"]))
        return b"GET / " + version + b"\r\nHost: x\r\n\r\n", {400, 505}, 0.0
    value = draw(st.sampled_from([b"-1", b"abc", b"1 2", b"0x10", b"+5"]))
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n", {400}, 0.0


@pytest.mark.parametrize("mode", ["asgi", "hello"])
@SETTINGS
@given(
    before=st.lists(request(), max_size=2),
    bad=malformed(),
    points=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_malformed_requests_end_in_an_error_and_a_close(
    mode: str,
    tls_state: TLSState,
    pki: Path,
    caplog: pytest.LogCaptureFixture,
    before: list[bytes],
    bad: tuple[bytes, set[int], float],
    points: list[int],
) -> None:
    data, statuses, wait = bad
    caplog.set_level(logging.INFO, logger="mtlskit")
    caplog.clear()
    chunks = splits(b"".join(before) + data, points)
    received, closed = exchange(mode, tls_state, client_ctx(pki), chunks, len(before) + 1, wait)
    assert closed, received[-300:]
    answers = [int(m) for m in re.findall(rb"(?:^|\n)HTTP/1\.1 (\d{3}) ", received)]
    assert answers[: len(before)] == [200] * len(before)  # the requests before it: answered
    assert answers[-1] in statuses, (answers, received[-300:])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
