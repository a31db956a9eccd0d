"""WebSocket for ASGI apps (issue 10, defect 11): unchanged Starlette and FastAPI endpoints
served over mTLS to a real client library (websockets), with the client's identity.

The scope carries the TLS extension; allow rules apply (403); pings are answered and a
peer that answers none is dropped; close codes travel both ways; a message over
--ws-max-size closes with 1009; send() waits while the client does not read; a client
without a certificate never gets a handshake.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request

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

async def seen(request):
    return JSONResponse(SEEN)

app = Starlette(routes=[
    WebSocketRoute("/echo", echo), WebSocketRoute("/firehose", firehose),
    WebSocketRoute("/refuse", refuse), WebSocketRoute("/boom", boom),
    WebSocketRoute("/boom-later", boom_later), WebSocketRoute("/quiet", quiet),
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


def seen(served: Served) -> dict[str, int]:
    data: dict[str, int] = json.loads(https(served.port, client_ctx(served.certs), path="/seen")[2])
    return data


def wait_seen(served: Served, key: str, timeout: float = 10) -> int:
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
