"""Real servers for the client tests: the Go seed server, and small stdlib ones.

The stdlib servers exist for what the Go seed server cannot do: echo the request,
answer a chosen status, hang, trust another CA (OpenSSL's "unknown ca" alert),
speak plain HTTP, or answer with canned bytes. Fixtures are imported by
tests/test_client_*.py.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mtlskit.pki.ca import CA
from mtlskit.tls import server_context
from tests.support.processes import free_port, go_binary, wait_for_port
from tests.support.server import start_serve

SEED_SANS = ("DNS:localhost", "DNS:www.example.com", "IP:127.0.0.1")


def one_line_error(stderr: str) -> str:
    """The CLI's error output: exactly one line `error: ...`, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(name="seed_server")
def seed_server_fixture(procs: list[subprocess.Popen[bytes]]) -> Callable[[Path], str]:
    """Start the Go seed server on a free port with a certs folder; returns its URL."""

    def start(certs: Path) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [go_binary("seed-server"), "-addr", f"127.0.0.1:{port}", "-certs", certs, "-quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        wait_for_port(port, proc)
        return f"https://localhost:{port}"

    return start


@pytest.fixture(name="mtlskit_server")
def mtlskit_server_fixture(
    procs: list[subprocess.Popen[bytes]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Path], str]:
    """Start `mtlskit serve` (the project's own server) on a free port; returns its URL."""

    def start(certs: Path) -> str:
        served = start_serve(procs, certs, tmp_path_factory.mktemp("serve"), "--quiet")
        return f"https://localhost:{served.port}"

    return start


@dataclass
class OtherPKI:
    """A second CA, named differently from the seed's, with its own server and client."""

    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="session", name="other_pki")
def other_pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> OtherPKI:
    folder = tmp_path_factory.mktemp("other-pki")
    ca = CA.create("/O=Elsewhere/CN=Other CA", days=30)
    ca.save(folder)
    ca.issue("server", "CN=localhost", sans=SEED_SANS, days=30).save(folder, "server")
    ca.issue("client", "CN=stranger", days=30).save(folder, "client")
    return OtherPKI(
        folder,
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
    )


class _Echo(BaseHTTPRequestHandler):
    """Answers JSON describing the request; /status/N answers N; /hang never answers."""

    protocol_version = "HTTP/1.1"
    server: _TLSServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/hang":
            self.server.release.wait(30)
            return
        code = int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body": body.decode("utf-8", "replace"),
                "client": dict(x[0] for x in peer["subject"]) if peer else None,
            }
        ).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Twice", "a")
        self.send_header("X-Twice", "b")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.context = context
        self.release = threading.Event()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.context is None:
            return sock, addr
        # The handshake runs in the request's thread, on its first read.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are the point of several tests


@dataclass
class EchoServer:
    port: int
    server: _TLSServer

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


@pytest.fixture(name="echo_server")
def echo_server_fixture() -> Iterator[Callable[..., EchoServer]]:
    """Start a stdlib HTTPS (or, with tls=False, plain HTTP) echo server."""
    started: list[tuple[_TLSServer, threading.Thread]] = []

    def start(
        certs: Path | None,
        *,
        client_ca: Path | None = None,
        tls: bool = True,
        max_version: ssl.TLSVersion | None = None,
    ) -> EchoServer:
        context = None
        if tls:
            assert certs is not None
            context = server_context(
                certs / "server.crt", certs / "server.key", client_ca or certs / "ca.crt"
            )
            if max_version is not None:
                context.maximum_version = max_version
        server = _TLSServer(context)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        started.append((server, thread))
        return EchoServer(server.server_address[1], server)

    yield start
    for server, thread in started:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(name="silent_port")
def silent_port_fixture() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) but never speaks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


# Canned answers, byte for byte, for what a well-behaved server never sends.
ANSWERS = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n world!\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "/chunked-404": b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: CHUNKED\r\n\r\n"
    b"4\r\nnone\r\n0\r\n\r\n",
    "/until-close": b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it, until close",
    "/no-reason": b"HTTP/1.1 503\r\nContent-Length: 4\r\n\r\ndown",
    "/latin1-reason": b"HTTP/1.1 418 I\xe9m a teapot \r\nContent-Length: 3\r\n\r\ntea",
    "/ansi-reason": b"HTTP/1.1 500 \x1b[31mred\x1b[0m\r\nContent-Length: 0\r\n\r\n",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "/204-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/lf-only": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
    "/folded": b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "/gzip-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz",
    "/bad-status": b"HTTP/1.1 abc Nope\r\n\r\n",
    "/not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "/short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",
    "/nothing": b"",
    "/early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok",
    "/chunked-truncated": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    "/long-header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "/switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
    "/rtsp": b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
}

# Canned answers after which the connection stays open (until the server stops).
HELD_ANSWERS = {
    "/head-open": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # for a HEAD
    "/stall-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
}


class _Canned(socketserver.BaseRequestHandler):
    """Handshakes, reads the request for PATH, answers ANSWERS[PATH] and closes, or
    HELD_ANSWERS[PATH] and waits; /silent never answers (until the server stops)."""

    server: _CannedServer

    def handle(self) -> None:
        try:
            tls = self.server.context.wrap_socket(self.request, server_side=True)
        except OSError:
            return
        with tls:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            if path == "/silent":
                self.server.stopping.wait(30)
                return
            try:
                tls.sendall(ANSWERS.get(path) or HELD_ANSWERS[path])
            except OSError:
                return  # the client gave up first (a header section too long)
            if path in HELD_ANSWERS:
                self.server.stopping.wait(30)


class _CannedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Canned)
        self.context = context
        self.stopping = threading.Event()


@pytest.fixture(name="canned_server")
def canned_server_fixture(seed_certs_p256: Path) -> Iterator[int]:
    """A tiny stdlib TLS server with canned answers (ANSWERS); yields its port. TLS 1.2,
    so that a closed connection is not explained by a second handshake (TLS 1.3's)."""
    certs = seed_certs_p256
    context = server_context(certs / "server.crt", certs / "server.key", certs / "ca.crt")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = _CannedServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(name="full_backlog_port")
def full_backlog_port_fixture() -> Iterator[int]:
    """A port whose listen queue is full: the kernel drops new SYNs, so a connect
    neither succeeds nor is refused (a connect timeout on loopback)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers: list[socket.socket] = []
        try:
            while len(fillers) < 64:
                probe = socket.socket()
                probe.settimeout(0.2)
                try:
                    probe.connect(address)
                except TimeoutError:
                    probe.close()
                    break  # this SYN was dropped: the queue is full
                fillers.append(probe)
            else:
                pytest.fail("the listen queue never filled")
            yield int(address[1])
        finally:
            for s in fillers:
                s.close()
