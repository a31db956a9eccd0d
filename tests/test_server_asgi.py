"""ASGI hosting: the TLS extension, lifespan, Starlette and FastAPI apps unchanged,
streaming, pipelining, errors, disconnects and graceful shutdown."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.processes import free_port
from tests.support.server import (
    Served,
    client_ctx,
    https,
    make_pki,
    read_until_closed,
    start_serve,
    stop_all,
    tls_socket,
)

RAW_APP = """
import asyncio, json, pathlib

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                pathlib.Path("shutdown.done").write_text("ok")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/scope":
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        out = {k: scope[k] for k in ("http_version", "method", "path", "scheme", "client", "server")}
        out["raw_path"] = scope["raw_path"].decode()
        out["query_string"] = scope["query_string"].decode()
        out["headers"] = [[k.decode(), v.decode()] for k, v in scope["headers"]]
        out["tls"] = scope["extensions"]["tls"]
        out["state"] = scope["state"]
        out["body"] = body.decode()
        data = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})
    elif path == "/slow":
        await asyncio.sleep(1.0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"slow done"})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await asyncio.sleep(0)
    elif path == "/boom":
        raise RuntimeError("app bug")
    elif path == "/nothing":
        return
    else:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
"""

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

async def whoami(request: Request):
    tls = request.scope["extensions"]["tls"]
    return JSONResponse({"name": tls["client_cert_name"], "chain": len(tls["client_cert_chain"]),
                         "body": (await request.body()).decode()})

async def numbers(request: Request):
    async def gen():
        for i in range(5):
            yield f"{i}\\n"
    return StreamingResponse(gen(), media_type="text/plain")

app = Starlette(routes=[Route("/whoami", whoami, methods=["GET", "POST"]), Route("/numbers", numbers)])
"""

FASTAPI_APP = """
from cryptography import x509
from fastapi import Depends, FastAPI, HTTPException, Request

app = FastAPI()

def client_cn(request: Request) -> str:
    tls = request.scope.get("extensions", {}).get("tls")
    if not tls or not tls["client_cert_chain"]:
        raise HTTPException(status_code=401)
    cert = x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value

@app.get("/hello/{name}")
def hello(name: str, cn: str = Depends(client_cn)):
    return {"hello": name, "client_cn": cn}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("apps")
    (folder / "raw_app.py").write_text(textwrap.dedent(RAW_APP))
    (folder / "star_app.py").write_text(textwrap.dedent(STARLETTE_APP))
    (folder / "fast_app.py").write_text(textwrap.dedent(FASTAPI_APP))
    return folder


@pytest.fixture(scope="module")
def raw(pki: Path, app_dir: Path) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = start_serve(procs, pki, app_dir, "raw_app:app", cwd=app_dir)
        yield served
        assert served.stop() == 0
    finally:
        stop_all(procs)


def _scope(port: int, ctx: ssl.SSLContext, path: str = "/scope", **kw: object) -> dict[str, object]:
    status, _, body = https(port, ctx, path=path, **kw)  # type: ignore[arg-type]
    assert status == 200, body
    data: dict[str, object] = json.loads(body)
    return data


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_extension(raw: Served, pki: Path, tls: ssl.TLSVersion) -> None:
    ctx = client_ctx(pki, tls_max=tls)
    scope = _scope(raw.port, ctx, "/scope?a=1&b=%20", method="POST", body=b"payload")
    ext = scope["tls"]
    assert isinstance(ext, dict)
    client = x509.load_pem_x509_certificate((pki / "client.crt").read_bytes())
    server = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    chain = ext["client_cert_chain"]
    assert isinstance(chain, list) and len(chain) >= 1
    assert x509.load_pem_x509_certificate(chain[0].encode()) == client
    assert ext["client_cert_name"] == "CN=client,O=Dev" == client.subject.rfc4514_string()
    assert ext["client_cert_error"] is None
    assert x509.load_pem_x509_certificate(ext["server_cert"].encode()) == server
    if tls == ssl.TLSVersion.TLSv1_3:
        assert ext["tls_version"] == 0x0304
        assert ext["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    else:
        assert ext["tls_version"] == 0x0303
        assert ext["cipher_suite"] in (0xC02B, 0xC02C, 0xCCA9)
    assert scope["method"] == "POST" and scope["body"] == "payload"
    assert scope["path"] == "/scope" and scope["query_string"] == "a=1&b=%20"
    assert scope["scheme"] == "https" and scope["http_version"] == "1.1"
    assert scope["server"] == ["127.0.0.1", raw.port]
    assert scope["state"] == {"started": "yes"}  # from the lifespan startup
    assert ["content-length", "7"] in scope["headers"]  # type: ignore[operator]


def test_streaming_pipelining_and_errors(raw: Served, pki: Path) -> None:
    ctx = client_ctx(pki)
    with tls_socket(raw.port, ctx) as s:
        s.sendall(
            b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /scope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nabcd\r\n0\r\n\r\n"
            b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        data = read_until_closed(s)
    first, rest = data.split(b"0\r\n\r\n", 1)  # the chunked /stream response comes first
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in first
    assert b"part0;" in first and b"part2;" in first
    assert rest.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b'"body": "abcd"' in rest
    assert rest.index(b"HTTP/1.1 204") < rest.index(b"HTTP/1.1 200") < rest.index(b"HTTP/1.1 500")
    assert https(raw.port, ctx, path="/nothing")[0] == 500
    log = raw.wait_log("the ASGI app returned without sending a response")
    assert "exception in the ASGI app" in log  # the app's own bug: its traceback is logged


def test_expect_100_continue(raw: Served, pki: Path) -> None:
    with tls_socket(raw.port, client_ctx(pki)) as s:
        s.sendall(
            b"POST /scope HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abc")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b'"body": "abc"' in data


def test_client_disconnect_mid_response_is_silent(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    raw = start_serve(procs, pki, tmp_path, "raw_app:app", cwd=app_dir)
    for _ in range(3):
        with tls_socket(raw.port, client_ctx(pki)) as s:
            s.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    with tls_socket(raw.port, client_ctx(pki)) as s:  # mid-request: half a body
        s.sendall(b"POST /scope HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    assert https(raw.port, client_ctx(pki), path="/other")[0] == 204
    assert raw.stop() == 0
    log = raw.log()
    assert "Traceback" not in log and "error" not in log.lower(), log


def test_graceful_shutdown_finishes_in_flight(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    (app_dir / "shutdown.done").unlink(missing_ok=True)
    served = start_serve(procs, pki, tmp_path, "raw_app:app", cwd=app_dir)
    result: dict[str, object] = {}

    def slow() -> None:
        result["r"] = https(served.port, client_ctx(pki), path="/slow")

    t = threading.Thread(target=slow)
    t.start()
    served.wait_log("new request GET /slow")
    assert served.stop() == 0
    t.join(10)
    status, headers, body = result["r"]  # type: ignore[misc]
    assert (status, body) == (200, b"slow done")
    assert headers["connection"] == "close"
    assert (app_dir / "shutdown.done").read_text() == "ok"  # lifespan shutdown ran


def test_starlette_app_unchanged(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "star_app:app", cwd=app_dir)
    status, _, body = https(served.port, client_ctx(pki), "POST", "/whoami", body=b"hi")
    assert status == 200
    data = json.loads(body)
    # The chain is what the client sent: its leaf, plus the CA when its TLS stack adds it.
    assert data.pop("chain") >= 1
    assert data == {"name": "CN=client,O=Dev", "body": "hi"}
    status, headers, body = https(served.port, client_ctx(pki), path="/numbers")
    assert (status, body) == (200, b"0\n1\n2\n3\n4\n")
    assert headers["transfer-encoding"] == "chunked"
    assert https(served.port, client_ctx(pki), path="/missing")[0] == 404
    assert served.stop() == 0
    assert "Traceback" not in served.log()


def test_fastapi_app_unchanged(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "fast_app:app", "--allow-cn", "client", cwd=app_dir)
    status, _, body = https(served.port, client_ctx(pki), path="/hello/world")
    assert status == 200
    assert json.loads(body) == {"hello": "world", "client_cn": "client"}
    # --allow-cn applies before the app: alice never reaches it.
    assert https(served.port, client_ctx(pki, "alice"), path="/hello/world")[0] == 403
    assert served.stop() == 0
    assert "Traceback" not in served.log()


def test_lifespan_startup_failure_is_one_line(pki: Path, tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(
        textwrap.dedent(
            """
            async def app(scope, receive, send):
                await receive()
                await send({"type": "lifespan.startup.failed", "message": "no database"})
            """
        )
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlskit",
            "serve",
            "failing:app",
            "--certs",
            str(pki),
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "error: the app's startup failed: no database: fix the app"


def test_idle_timeout_spares_a_busy_request(
    pki: Path, app_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(
        procs,
        pki,
        tmp_path,
        "raw_app:app",
        "--idle-timeout",
        "0.2",
        "--body-timeout",
        "0.5",
        cwd=app_dir,
    )
    status, _, body = https(served.port, client_ctx(pki), path="/slow")  # 1 s in the app
    assert (status, body) == (200, b"slow done")
    # ... but not a client that stops sending its request body (--body-timeout).
    with tls_socket(served.port, client_ctx(pki)) as s:
        s.sendall(b"POST /scope HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        s.settimeout(5)
        assert read_until_closed(s).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    served.wait_log("request body stalled for 0.5s (3 bytes of 100 received) (408)")
    assert served.stop() == 0
    assert "Traceback" not in served.log()
