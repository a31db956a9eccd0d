"""WebSocket for ASGI apps (issue 10, defect 11): unchanged Starlette and FastAPI endpoints
served over mTLS to a real client library (websockets), with the client's identity.

The scope carries the TLS extension; allow rules apply (403); pings are answered and a
peer that answers none is dropped; close codes travel both ways; a message over
--ws-max-size closes with 1009; send() waits while the client does not read, and reading
pauses while the app takes no message; a client without a certificate never gets a
handshake; the app's own denial response (websocket.http.response) reaches the client,
and an invalid one is an app error, never bytes of another meaning.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, RejectConnection, RejectData, Request

from tests.support.proxy import rss_kib
from tests.support.server import (
    Served,
    client_ctx,
    https,
    make_pki,
    start_serve,
    stop_all,
    tls_socket,
)

STARLETTE_APP = r"""
import asyncio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SEEN = {}

async def echo(ws: WebSocket):
    await ws.accept(subprotocol="chat" if "chat" in ws.scope["subprotocols"] else None)
    tls = ws.scope["extensions"]["tls"]
    await ws.send_json({"name": tls["client_cert_name"], "chain": len(tls["client_cert_chain"]),
                        "scheme": ws.scope["scheme"], "path": ws.url.path})
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                SEEN["echo"] = msg["code"]
                return
            if msg.get("text") == "close please":
                await ws.close(code=4001, reason="bye")
                return
            if msg.get("text") is not None:
                await ws.send_text("echo:" + msg["text"])
            else:
                await ws.send_bytes(b"echo:" + msg["bytes"])
    except WebSocketDisconnect as exc:
        SEEN["echo"] = exc.code

async def firehose(ws: WebSocket):
    await ws.accept()
    SEEN["sent"] = 0
    chunk = b"x" * 65536
    try:
        for _ in range(2000):  # 128 MiB, if the client read it all
            await ws.send_bytes(chunk)
            SEEN["sent"] += 1
    except (WebSocketDisconnect, OSError):
        pass

async def refuse(ws: WebSocket):
    await ws.close()  # before the accept: 403

async def boom(ws: WebSocket):
    raise RuntimeError("app bug before the accept")

async def boom_later(ws: WebSocket):
    await ws.accept()
    await ws.receive_text()
    raise RuntimeError("app bug after the accept")

async def quiet(ws: WebSocket):
    await ws.accept()
    try:
        await ws.receive_text()
    except WebSocketDisconnect as exc:
        SEEN["quiet"] = exc.code

GO = asyncio.Event()

async def sink(ws: WebSocket):  # takes nothing until /go, then every message, in order
    GO.clear()
    await ws.accept()
    await ws.send_text("ready")
    await GO.wait()
    count = 0
    in_order = True
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") == "end":
            await ws.send_json({"count": count, "in_order": in_order})
            continue
        in_order = in_order and int.from_bytes(msg["bytes"][:8], "big") == count
        count += 1

async def go(request):
    GO.set()
    return PlainTextResponse("go")

async def unwelcome(ws: WebSocket):
    await ws.send_denial_response(PlainTextResponse(
        "who are you?", status_code=401, headers={"www-authenticate": 'Bearer realm="ws"'}))

def start(status, headers=()):
    return {"type": "websocket.http.response.start", "status": status, "headers": list(headers)}

def body(data, more=False):
    return {"type": "websocket.http.response.body", "body": data, "more_body": more}

# Raw ASGI denial responses (the websocket.http.response extension), valid and not.
DENIALS = {
    "parts": [start(403, [(b"content-type", b"text/plain"), (b"x-why", b"members only")]),
              body(b"members ", True), body(b"only", True), body(b"!\n")],
    "body-first": [body(b"no")],
    "status-101": [start(101)],
    "status-999": [start(999)],
    "status-str": [start("403")],
    "header-name": [start(403, [(b"x-a: b", b"1")])],
    "header-value": [start(403, [(b"x-a", b"1\r\nx-injected: yes")])],
    "header-str": [start(403, [("x-a", "1")])],
    "body-int": [start(403), body(16)],
    "body-str": [start(403), body("no")],
    "too-long": [start(403, [(b"content-length", b"5")]), body(b"123456")],
    "too-short": [start(403, [(b"content-length", b"5")]), body(b"1234")],
    "start-twice": [start(403), start(200)],
    "start-accept": [start(403), {"type": "websocket.accept"}],
    "unfinished": [start(403), body(b"part", True)],
}

class Deny:  # a class, not a function: Starlette routes to it as a raw ASGI app
    async def __call__(self, scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        case = scope["path_params"]["case"]
        for message in DENIALS[case]:
            await send(message)
        if case == "parts":
            try:
                await send({"type": "websocket.send", "text": "too late"})
            except Exception as exc:
                SEEN["late"] = type(exc).__name__

async def seen(request):
    return JSONResponse(SEEN)

app = Starlette(routes=[
    WebSocketRoute("/echo", echo), WebSocketRoute("/firehose", firehose),
    WebSocketRoute("/refuse", refuse), WebSocketRoute("/boom", boom),
    WebSocketRoute("/boom-later", boom_later), WebSocketRoute("/quiet", quiet),
    WebSocketRoute("/sink", sink), Route("/go", go),
    WebSocketRoute("/unwelcome", unwelcome), WebSocketRoute("/deny/{case}", Deny()),
    Route("/seen", seen),
])
"""

FASTAPI_APP = r"""
from cryptography import x509
from fastapi import FastAPI, WebSocket

app = FastAPI()

@app.websocket("/ws/{room}")
async def room(ws: WebSocket, room: str):
    await ws.accept()
    tls = ws.scope["extensions"]["tls"]
    cert = x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    text = await ws.receive_text()
    await ws.send_json({"room": room, "cn": cn, "said": text})
    await ws.close()
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("apps")
    (folder / "ws_star.py").write_text(textwrap.dedent(STARLETTE_APP))
    (folder / "ws_fast.py").write_text(textwrap.dedent(FASTAPI_APP))
    return folder


@pytest.fixture(scope="module")
def star(pki: Path, app_dir: Path) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    options = ("--ws-max-size", "100K", "--ws-ping-interval", "0.5", "--ws-ping-timeout", "1")
    try:
        served = start_serve(procs, pki, app_dir, "ws_star:app", *options, cwd=app_dir)
        yield served
        assert served.stop() == 0
    finally:
        stop_all(procs)


def ws(served: Served, path: str, name: str | None = "client", **kw: object) -> ClientConnection:
    ctx = client_ctx(served.certs, name)
    return connect(
        f"wss://localhost:{served.port}{path}", ssl=ctx, open_timeout=10, close_timeout=5, **kw
    )  # type: ignore[arg-type]


def seen(served: Served) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(https(served.port, client_ctx(served.certs), path="/seen")[2])
    return data


def wait_seen(served: Served, key: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = seen(served).get(key)
        if value is not None:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{key} not seen: {seen(served)}")


def test_starlette_endpoint_with_the_client_identity(star: Served) -> None:
    with ws(star, "/echo", subprotocols=["chat"]) as c:  # type: ignore[list-item]
        assert c.subprotocol == "chat"
        hello = json.loads(c.recv(timeout=5))
        assert hello.pop("chain") >= 1
        assert hello == {"name": "CN=client,O=Dev", "scheme": "wss", "path": "/echo"}
        c.send("hi")
        assert c.recv(timeout=5) == "echo:hi"
        c.send(b"\x00\x01")
        assert c.recv(timeout=5) == b"echo:\x00\x01"
        pong = c.ping(b"are you there")
        assert pong.wait(5)
        c.close(code=4000, reason="done")
    assert wait_seen(star, "echo") == 4000  # the app got websocket.disconnect with the code
    star.wait_log("new request GET /echo from CN=client")


def test_the_app_closes_with_its_code(star: Served) -> None:
    with ws(star, "/echo") as c:
        c.recv(timeout=5)
        c.send("close please")
        with pytest.raises(ConnectionClosed) as exc:
            c.recv(timeout=5)
    assert exc.value.rcvd is not None
    assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4001, "bye")


def test_fastapi_endpoint_unchanged(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "ws_fast:app", "--allow-cn", "client", cwd=app_dir)
    with ws(served, "/ws/lobby") as c:
        c.send("hello")
        assert json.loads(c.recv(timeout=5)) == {"room": "lobby", "cn": "client", "said": "hello"}
    # --allow-cn applies before the app: alice's handshake is answered 403.
    with pytest.raises(InvalidStatus) as refused:
        ws(served, "/ws/lobby", name="alice")
    assert refused.value.response.status_code == 403
    served.wait_log("refused CN=alice SAN=DNS:alice.internal from 127.0.0.1")
    assert served.stop() == 0
    assert "Traceback" not in served.log()


def test_no_client_certificate_gets_no_websocket(star: Served) -> None:
    # TLS 1.3: the client's handshake ends before the server's alert comes; the alert
    # then ends the connection before any HTTP response.
    with pytest.raises((ssl.SSLError, ConnectionError, InvalidMessage, ConnectionClosed)):
        ws(star, "/echo", name=None)
    star.wait_log("the client sent no certificate (no_client_cert)")


def test_close_before_accept_is_a_403(star: Served) -> None:
    with pytest.raises(InvalidStatus) as exc:
        ws(star, "/refuse")
    assert exc.value.response.status_code == 403


def test_app_errors_are_a_500_or_1011(star: Served) -> None:
    with pytest.raises(InvalidStatus) as exc:
        ws(star, "/boom")
    assert exc.value.response.status_code == 500
    with ws(star, "/boom-later") as c:
        c.send("go")
        with pytest.raises(ConnectionClosed) as closed:
            c.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    star.wait_log("exception in the ASGI app (WebSocket /boom-later)")


def test_a_message_over_the_size_limit_closes_1009(star: Served) -> None:
    with ws(star, "/echo", max_size=None) as c:
        c.recv(timeout=5)
        c.send(b"a" * 100 * 1024)  # exactly the limit: fine
        assert len(c.recv(timeout=5)) == 5 + 100 * 1024
        c.send(b"a" * (100 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as exc:
            c.recv(timeout=5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    assert wait_seen(star, "echo") == 1009
    star.wait_log("a message over --ws-max-size (102400 bytes) (1009)")


def test_send_waits_while_the_client_reads_nothing(star: Served) -> None:
    """Backpressure: the app's send() blocks once the socket buffers are full, so a client
    that stops reading holds the server to a bounded amount of memory."""
    with ws(star, "/firehose") as c:
        c.recv(timeout=5)  # one message: the stream is flowing
        time.sleep(1.5)  # the client reads nothing: what did the app manage to send?
        sent = seen(star)["sent"]
        assert sent < 200, f"{sent} messages of 64 KiB sent to a client that reads nothing"
        for _ in range(50):  # reading again lets the app go on
            c.recv(timeout=5)
        deadline = time.monotonic() + 5
        while seen(star)["sent"] <= sent and time.monotonic() < deadline:
            c.recv(timeout=5)
        assert seen(star)["sent"] > sent


def test_a_peer_that_answers_no_ping_is_dropped(star: Served) -> None:
    """wsproto as a raw client that never answers the server's pings (--ws-ping-interval
    0.5, --ws-ping-timeout 1)."""
    client = WSConnection(ConnectionType.CLIENT)
    with tls_socket(star.port, client_ctx(star.certs)) as s:
        s.sendall(client.send(Request(host="localhost", target="/quiet")))
        s.settimeout(10)
        pings = 0
        accepted = False
        started = time.monotonic()
        while True:
            try:
                data = s.recv(65536)
            except (ssl.SSLError, ConnectionError):
                break
            if not data:
                break
            client.receive_data(data)
            for event in client.events():
                accepted = accepted or isinstance(event, AcceptConnection)
                pings += isinstance(event, Ping)
        took = time.monotonic() - started
    assert accepted and pings >= 1 and took < 5
    assert wait_seen(star, "quiet") == 1006
    star.wait_log("closed WebSocket /quiet from 127.0.0.1")
    star.wait_log("no pong for 1s (--ws-ping-timeout)")


def test_a_quiet_peer_that_answers_pings_stays(star: Served) -> None:
    with ws(star, "/echo") as c:  # websockets answers pings by itself
        c.recv(timeout=5)
        time.sleep(2.5)  # several ping intervals, and longer than the ping timeout
        c.send("still here")
        assert c.recv(timeout=5) == "echo:still here"


def test_shutdown_closes_websockets_with_1001(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "ws_star:app", cwd=app_dir)
    with ws(served, "/echo") as c:
        c.recv(timeout=5)
        served.proc.send_signal(15)
        with pytest.raises(ConnectionClosed) as exc:
            c.recv(timeout=10)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001
    assert served.proc.wait(timeout=15) == 0
    assert "Traceback" not in served.log()


def test_a_bad_handshake_is_a_400(star: Served) -> None:
    request = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"  # no Sec-WebSocket-Key
    )
    with tls_socket(star.port, client_ctx(star.certs)) as s:
        s.sendall(request)
        s.settimeout(5)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


def denial(served: Served, path: str) -> tuple[bytes, list[object], bool]:
    """A raw handshake to ``path``: the bytes the server sent, wsproto's reading of them as
    a client, and whether the connection ended cleanly (close_notify, not a cut)."""
    client = WSConnection(ConnectionType.CLIENT)
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    ctx = client_ctx(served.certs)
    with ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
        s.sendall(client.send(Request(host="localhost", target=path)))
        data = b""
        clean = False
        while True:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                clean = True
                break
            data += chunk
    client.receive_data(data)
    return data, list(client.events()), clean


def test_a_denial_response_reaches_the_client(star: Served) -> None:
    """The websocket.http.response extension: the app's own status, headers and body (in
    parts), read by a real client, then a clean close; the app's later send raises."""
    with pytest.raises(InvalidStatus) as exc:
        ws(star, "/deny/parts")
    response = exc.value.response
    assert (response.status_code, response.body) == (403, b"members only!\n")
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["x-why"] == "members only"
    assert wait_seen(star, "late") == "RuntimeError"

    data, events, clean = denial(star, "/deny/parts")
    assert clean, data
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 403
    assert b"".join(e.data for e in events[1:] if isinstance(e, RejectData)) == b"members only!\n"
    assert isinstance(events[-1], RejectData) and events[-1].body_finished


def test_starlette_send_denial_response(star: Served) -> None:
    with pytest.raises(InvalidStatus) as exc:
        ws(star, "/unwelcome")
    response = exc.value.response
    assert (response.status_code, response.body) == (401, b"who are you?")
    assert response.headers["www-authenticate"] == 'Bearer realm="ws"'


@pytest.mark.parametrize(
    "case",
    [
        "body-first",
        "status-101",
        "status-999",
        "status-str",
        "header-name",
        "header-value",
        "header-str",
    ],
)
def test_an_invalid_denial_before_any_byte_is_a_500(star: Served, case: str) -> None:
    data, events, clean = denial(star, f"/deny/{case}")
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 500, data
    assert b"injected" not in data and b"x-a" not in data.lower()
    assert clean
    star.wait_log(f"invalid response from the ASGI app (WebSocket /deny/{case})")
    assert star.log().count(f"(WebSocket /deny/{case})") == 1


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("body-int", "the body must be bytes, not int"),
        ("body-str", "the body must be bytes, not str"),
        ("too-long", "Too much data for declared Content-Length"),
        ("too-short", "Too little data for declared Content-Length"),
        ("start-twice", "expected 'websocket.http.response.body', got"),
        ("start-accept", "expected 'websocket.http.response.body', got"),
        ("unfinished", "the ASGI app returned before finishing its denial response"),
    ],
)
def test_an_invalid_denial_after_its_head_cuts_the_connection(
    star: Served, case: str, why: str
) -> None:
    """The head went out: nothing more is written (no bytes another response could be
    read from), and the connection is cut at once, so the client sees the body unfinished."""
    started = time.monotonic()
    data, events, clean = denial(star, f"/deny/{case}")
    assert time.monotonic() - started < 3
    assert not clean
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 403, data
    assert not any(isinstance(e, RejectData) and e.body_finished for e in events), data
    assert b"\0" not in data and b"1234" not in data and b"HTTP/1.1 200" not in data
    log = star.wait_log(why)
    assert log.count(f"(WebSocket /deny/{case})") == 1, log


def test_reading_pauses_while_the_app_takes_no_message(star: Served) -> None:
    """Backpressure inward: a client floods while the app sleeps. The server stops reading
    (the client's send blocks after a few MiB, the server's memory stays flat), keeps
    the client (pings wait while reading is paused), and then delivers every message."""
    size, count = 64 * 1024, 1024  # 64 MiB offered
    pushed = [0]
    failed: list[BaseException] = []

    def flood(c: ClientConnection) -> None:
        payload = b"x" * (size - 8)
        try:
            for i in range(count):
                c.send(i.to_bytes(8, "big") + payload)
                pushed[0] += size
        except BaseException as exc:  # for the test to say, not the thread hook
            failed.append(exc)

    with ws(star, "/sink", max_size=None) as c:
        assert c.recv(timeout=5) == "ready"
        rss_before = rss_kib(star.proc.pid)
        sender = threading.Thread(target=flood, args=(c,), daemon=True)
        sender.start()
        # The app sleeps for 2 s: the server reads what it buffers, then pauses.
        started = time.monotonic()
        history = [(started, 0)]
        while time.monotonic() - started < 2.0 and sender.is_alive():
            time.sleep(0.05)
            history.append((time.monotonic(), pushed[0]))
        rss_grown = rss_kib(star.proc.pid) - rss_before
        blocked_at = pushed[0]
        stalled = [n for t, n in history if t > history[-1][0] - 0.5]
        print(f"pushed {blocked_at / 2**20:.1f} MiB, server RSS +{rss_grown / 1024:.1f} MiB")
        assert not failed, f"the connection broke during the flood: {failed[0]!r}"
        assert sender.is_alive(), "all 64 MiB went in: the server buffered them"
        assert stalled[0] == blocked_at, "the client could still write after 1.5 s"
        assert blocked_at < 24 * 1024 * 1024, blocked_at
        assert rss_grown < 16 * 1024, f"server RSS grew {rss_grown} KiB"
        assert https(star.port, client_ctx(star.certs), path="/go")[0] == 200
        sender.join(timeout=10)
        assert not sender.is_alive() and not failed, failed
        c.send("end")
        assert json.loads(c.recv(timeout=10)) == {"count": count, "in_order": True}
