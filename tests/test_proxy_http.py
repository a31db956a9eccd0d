"""`mtlskit proxy server --http` (L7): identity headers as real backends receive them,
spoofed ones stripped, framing, keep-alive reuse, WebSocket, refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.pki.ca import CA
from tests.support.processes import free_port, go_binary
from tests.support.proxy import (
    Proxy,
    TLSClient,
    client_ssl_context,
    close_clients,
    start_nginx,
    start_proxy,
)
from tests.support.server import write_files

Procs = list[subprocess.Popen[bytes]]

_close_clients = pytest.fixture(autouse=True)(close_clients)


class Backend(ThreadingHTTPServer):
    """A stdlib HTTP/1.1 backend that answers with what it received, as JSON."""

    daemon_threads = True
    connections = 0
    requests: list[dict[str, Any]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Backend

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        seen = {
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1") if len(body) < 4096 else len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        self.server.requests.append(seen)
        if self.path.startswith("/close-delimited"):
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the end")
            self.close_connection = True
            return
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(range(256)) * 256
            for start in range(0, size, len(block)):
                self.wfile.write(block[: size - start])
            return
        if self.path.startswith("/no-content"):
            self.send_response(204)
            self.end_headers()
            return
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Backend", "stdlib")
        self.send_header("Connection", "keep-alive, X-Hop")
        self.send_header("X-Hop", "must not reach the client")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_HEAD = _answer


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend(("127.0.0.1", 0), Handler)
    server.requests = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(procs: Procs, tmp_path: Path, seed_certs_p256: Path, backend: Backend) -> Proxy:
    return start_proxy(
        procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{backend.server_address[1]}",
        "--certs", seed_certs_p256, "--allow-cn", "client",
    )  # fmt: skip


def https(port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)


def headers_of(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


def client_der(certs: Path) -> bytes:
    cert = x509.load_pem_x509_certificate((certs / "client.crt").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


SPOOFED = [
    ("X-Forwarded-Client-Cert", 'Hash=0000;Subject="CN=admin"'),
    ("Client-Cert", ":AAAA:"),
    ("Client-Cert-Chain", ":AAAA:"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("Forwarded", "for=10.0.0.1"),
    ("X-Forwarded-Proto", "http"),
    ("X-Real-IP", "10.0.0.1"),
    ("x-forwarded-client-cert", "lower case"),
    ("X_Forwarded_For", "underscored, as WSGI reads it"),
    ("X-Forwarded-Client_Cert", "mixed"),
]


def test_identity_headers_as_the_backend_receives_them_spoofed_ones_stripped(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path
) -> None:
    conn = https(proxy.port, client_ssl_context(seed_certs_p256))
    conn.putrequest("GET", "/who?x=1", skip_accept_encoding=True)
    for name, value in SPOOFED:
        conn.putheader(name, value)
    conn.putheader("X-Kept", "yes")
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    assert resp.getheader("X-Backend") == "stdlib"
    assert resp.getheader("X-Hop") is None  # named by Connection: hop-by-hop
    assert body["path"] == "/who?x=1"
    der = client_der(seed_certs_p256)
    subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert headers_of(body, "X-Forwarded-Client-Cert") == [
        f'Hash={hashlib.sha256(der).hexdigest()};Subject="{subject}"'
    ]
    assert headers_of(body, "Client-Cert") == [":" + base64.b64encode(der).decode() + ":"]
    assert headers_of(body, "Client-Cert-Chain") == []  # the client sent no intermediate
    assert headers_of(body, "X-Forwarded-For") == ["127.0.0.1"]
    assert headers_of(body, "Forwarded") == ["for=127.0.0.1;proto=https"]
    assert headers_of(body, "X-Forwarded-Proto") == ["https"]
    assert headers_of(body, "X-Real-IP") == []
    names = [k.lower() for k, _ in body["headers"]]
    assert "x_forwarded_for" not in names and "x-forwarded-client_cert" not in names
    assert headers_of(body, "X-Kept") == ["yes"]


def test_xfcc_fields_and_the_client_chain(procs: Procs, tmp_path: Path, backend: Backend) -> None:
    root = CA.create("/CN=Root", key_type="p256", days=30)
    issuing = CA.create("/CN=Issuing", key_type="p256", days=30, parent=root)
    server = issuing.issue("server", "/CN=proxy", sans=["DNS:localhost", "URI:spiffe://t/proxy"])
    client = issuing.issue(
        "client",
        "/O=Team/CN=svc",
        sans=["DNS:svc.internal", "DNS:svc2.internal", "URI:spiffe://t/svc"],
    )
    certs = tmp_path / "certs"
    write_files(
        certs,
        {
            "ca.crt": root.cert_pem,
            "server.crt": server.cert_pem,
            "server.key": server.key_pem(),
            "client.crt": client.cert_pem,  # leaf + intermediate
            "client.key": client.key_pem(),
        },
    )
    proxy = start_proxy(
        procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{backend.server_address[1]}",
        "--certs", certs, "--allow-san", "URI:spiffe://t/*",
        "--xfcc-fields", "By,Hash,Subject,URI,DNS,Cert",
    )  # fmt: skip
    conn = https(proxy.port, client_ssl_context(certs))
    conn.request("GET", "/")
    body = json.loads(conn.getresponse().read())
    conn.close()
    leaf_der = client.certificate.public_bytes(serialization.Encoding.DER)
    xfcc = headers_of(body, "X-Forwarded-Client-Cert")[0]
    parts = xfcc.split(";")
    assert parts[0] == "By=spiffe://t/proxy"
    assert parts[1] == f"Hash={hashlib.sha256(leaf_der).hexdigest()}"
    assert parts[2].startswith("Cert=-----BEGIN%20CERTIFICATE-----%0A")
    assert parts[3:] == [
        'Subject="CN=svc,O=Team"',
        "URI=spiffe://t/svc",
        "DNS=svc.internal",
        "DNS=svc2.internal",
    ]
    chain = headers_of(body, "Client-Cert-Chain")
    intermediate = issuing.certificate.public_bytes(serialization.Encoding.DER)
    assert chain == [":" + base64.b64encode(intermediate).decode() + ":"]


def test_keep_alive_reuses_backend_connections(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path
) -> None:
    ctx = client_ssl_context(seed_certs_p256)
    for _ in range(3):  # three client connections, in turn
        conn = https(proxy.port, ctx)
        for i in range(5):
            conn.request("POST", f"/n{i}", body=b"x" * i)
            resp = conn.getresponse()
            assert json.loads(resp.read())["body"] == "x" * i
        conn.close()
    assert len(backend.requests) == 15
    assert backend.connections == 1  # one kept connection served them all


def test_framing_is_the_proxys(proxy: Proxy, backend: Backend, seed_certs_p256: Path) -> None:
    ctx = client_ssl_context(seed_certs_p256)
    conn = https(proxy.port, ctx)
    # A chunked request body arrives whole and chunked.
    conn.putrequest("PUT", "/chunked")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for piece in (b"hello ", b"chunked ", b"world"):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    seen = json.loads(conn.getresponse().read())
    assert seen["body"] == "hello chunked world"
    assert headers_of(seen, "Transfer-Encoding") == ["chunked"]
    # HEAD: the length without a body; 204: nothing.
    conn.request("HEAD", "/head")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") and resp.read() == b""
    conn.request("GET", "/no-content")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.read() == b""
    # A body that runs to the end of the backend's connection is chunked to the client,
    # and the client's connection lives on.
    conn.request("GET", "/close-delimited")
    resp = conn.getresponse()
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read() == b"until the end"
    conn.request("GET", "/after")
    assert json.loads(conn.getresponse().read())["path"] == "/after"
    conn.close()


def _raw(port: int, certs: Path, data: bytes) -> bytes:
    with TLSClient(port, client_ssl_context(certs)) as c:
        c.send(data)
        return c.recv_until_end()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    ],
    ids=["cl-then-te", "te-then-cl", "two-lengths", "gzip-chunked", "chunked-identity", "te-x",
         "space-in-name"],
)  # fmt: skip
def test_ambiguous_framing_is_refused_before_anything_reaches_the_backend(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path, request_bytes: bytes
) -> None:
    reply = _raw(proxy.port, seed_certs_p256, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
    assert backend.requests == [] and backend.connections == 0


def test_requests_before_a_bad_one_are_answered_in_order(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path
) -> None:
    reply = _raw(
        proxy.port,
        seed_certs_p256,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 200 OK") == 2
    assert reply.index(b'"/one"') < reply.index(b'"/two"') < reply.index(b"400 Bad Request")
    assert [r["path"] for r in backend.requests] == ["/one", "/two"]


def test_not_allowed_is_403_with_one_log_line(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path, backend: Backend
) -> None:
    proxy = start_proxy(
        procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{backend.server_address[1]}",
        "--certs", seed_certs_p256, "--allow-cn", "nobody",
    )  # fmt: skip
    reply = _raw(proxy.port, seed_certs_p256, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403 Forbidden")
    log = proxy.wait_log("refused CN=client from 127.0.0.1:")
    assert "no --allow-cn/--allow-san rule matches" in log
    assert backend.connections == 0


def test_target_down_is_502_with_one_log_line(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    dead = free_port()
    proxy = start_proxy(
        procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{dead}",
        "--certs", seed_certs_p256, "--allow-all",
    )  # fmt: skip
    reply = _raw(proxy.port, seed_certs_p256, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502 Bad Gateway")
    log = proxy.wait_log("cannot reach the target")
    assert f"127.0.0.1:{dead} for CN=client from 127.0.0.1:" in log


def test_a_kept_connection_the_backend_closed_is_retried_once(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path
) -> None:
    ctx = client_ssl_context(seed_certs_p256)
    conn = https(proxy.port, ctx)
    conn.request("GET", "/first")
    assert conn.getresponse().read()
    # The backend restarts: the kept connection is dead; the next GET still works.
    port = backend.server_address[1]
    backend.shutdown()
    backend.server_close()
    for t in threading.enumerate():
        if t.name.startswith("Thread") and t is not threading.current_thread():
            t.join(0.5)
    fresh = Backend(("127.0.0.1", port), Handler)
    fresh.requests = []
    threading.Thread(target=fresh.serve_forever, daemon=True).start()
    try:
        conn.request("GET", "/second")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["path"] == "/second"
    finally:
        conn.close()
        fresh.shutdown()
        fresh.server_close()


def test_nginx_backend_sees_the_identity(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    nginx = start_nginx(
        procs,
        tmp_path / "nginx",
        'location / { return 200 "xfcc=$http_x_forwarded_client_cert '
        'xff=$http_x_forwarded_for cc=$http_client_cert\\n"; }',
    )
    proxy = start_proxy(
        procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{nginx.port}",
        "--certs", seed_certs_p256, "--allow-all",
    )  # fmt: skip
    conn = https(proxy.port, client_ssl_context(seed_certs_p256))
    conn.request("GET", "/", headers={"X-Forwarded-For": "6.6.6.6"})
    text = conn.getresponse().read().decode()
    conn.close()
    der = client_der(seed_certs_p256)
    assert f"xfcc=Hash={hashlib.sha256(der).hexdigest()};Subject=" in text
    assert "xff=127.0.0.1 " in text
    assert f"cc=:{base64.b64encode(der).decode()}:" in text


def test_curl_and_the_go_seed_client(proxy: Proxy, seed_certs_p256: Path) -> None:
    c = seed_certs_p256
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", c / "ca.crt", "--cert", c / "client.crt",
         "--key", c / "client.key", "-H", "X-Forwarded-For: 1.2.3.4",
         f"https://localhost:{proxy.port}/curl"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["path"] == "/curl" and headers_of(seen, "X-Forwarded-For") == ["127.0.0.1"]
    r = subprocess.run(
        [go_binary("seed-client"), "-url", f"https://localhost:{proxy.port}", "-certs", c],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["headers"]
    # Without a certificate curl is refused at the handshake.
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--cacert", c / "ca.crt",
         f"https://localhost:{proxy.port}/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0 and r.stdout == ""
    proxy.wait_log("the client sent no certificate (no_client_cert)")


def test_websocket_through_l7(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    """aiohttp (a test dependency already) on both ends: a WebSocket echo behind the proxy."""
    from aiohttp import ClientSession, WSMsgType, web

    seen_xfcc: list[str] = []

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        seen_xfcc.append(request.headers.get("X-Forwarded-Client-Cert", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/ws", ws_echo)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            proxy = await asyncio.to_thread(
                start_proxy,
                procs, tmp_path, "server", "--http", "--target", f"127.0.0.1:{port}",
                "--certs", seed_certs_p256, "--allow-all",
            )  # fmt: skip
            ctx = client_ssl_context(seed_certs_p256)
            got: list[str] = []
            async with (
                ClientSession() as session,
                session.ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=ctx) as ws,
            ):
                await ws.send_str("hi")
                got.append((await ws.receive(timeout=10)).data)
                await ws.send_bytes(b"\x01\x02\x03" * 30000)  # 90 KB, past the buffers
                msg = await ws.receive(timeout=10)
                got.append("binary ok" if msg.data == b"\x03\x02\x01" * 30000 else "bad")
                await ws.close()
            return got
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) == ["echo:hi", "binary ok"]
    assert seen_xfcc and seen_xfcc[0].startswith("Hash=")


def test_http10_client_and_pipelining(
    proxy: Proxy, backend: Backend, seed_certs_p256: Path
) -> None:
    reply = _raw(
        proxy.port,
        seed_certs_p256,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /c HTTP/1.0\r\nHost: a\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.index(b'"/a"') < reply.index(b'"/b"') < reply.index(b'"/c"')
    assert [r["version"] for r in backend.requests] == ["HTTP/1.1"] * 3  # upgraded to 1.1
    # An HTTP/1.0 client gets a body without length, then the close.
    reply = _raw(proxy.port, seed_certs_p256, b"GET /close-delimited HTTP/1.0\r\n\r\n")
    assert reply.endswith(b"\r\n\r\nuntil the end") and b"chunked" not in reply


def test_expect_100_continue(proxy: Proxy, seed_certs_p256: Path) -> None:
    with TLSClient(proxy.port, client_ssl_context(seed_certs_p256)) as c:
        c.send(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        first = c.recv_some()
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n"), first
        c.send(b"body")
        data = first
        deadline = time.monotonic() + 10
        while b'"body": "body"' not in data:
            assert time.monotonic() < deadline, data
            data += c.recv_some()


def test_large_bodies_both_ways(proxy: Proxy, seed_certs_p256: Path) -> None:
    conn = https(proxy.port, client_ssl_context(seed_certs_p256))
    size = 24 * 1024 * 1024
    conn.request("GET", f"/big/{size}")
    resp = conn.getresponse()
    data = resp.read()
    block = bytes(range(256)) * 256
    assert len(data) == size and data[: len(block)] == block and data[-256:] == bytes(range(256))
    upload = bytes(range(256)) * (size // 256)
    conn.request("POST", "/upload", body=upload)
    seen = json.loads(conn.getresponse().read())
    assert seen["body"] == size and seen["sha256"] == hashlib.sha256(upload).hexdigest()
    conn.close()
