"""`mtlskit serve` (hello world): HTTP/1.1 behaviour, limits, access rules, startup errors."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port, run_cli
from tests.support.server import (
    Served,
    client_ctx,
    https,
    make_pki,
    read_responses,
    read_until_closed,
    start_serve,
    stop_all,
    tls_socket,
)

LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.M)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = start_serve(procs, pki, tmp_path_factory.mktemp("log"))
        yield served
        assert served.stop() == 0
        assert "Traceback" not in served.log()
    finally:
        stop_all(procs)


def test_hello_world_like_the_seed(server: Served) -> None:
    status, headers, body = https(server.port, client_ctx(server.certs), path="/any/path?q=1")
    assert (status, body) == (200, b"hello world \n")
    assert headers["content-length"] == "13"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert "date" in headers
    log = server.wait_log("new request GET /any/path?q=1")
    assert re.search(LOG_LINE.pattern + rf"listen on https://127.0.0.1:{server.port}$", log, re.M)
    line = next(x for x in log.splitlines() if "new request GET /any/path" in x)
    assert LOG_LINE.match(line)
    # The verified client: its CN and SANs.
    assert line.endswith(
        "from CN=client SAN=URI:spiffe://example.org/ns/dev/sa/client,email:client@example.org"
    )


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_every_method_gets_hello(server: Served, method: str) -> None:
    status, _, body = https(server.port, client_ctx(server.certs), method, "/x", body=b"data")
    assert (status, body) == (200, b"hello world \n")


def test_head_has_no_body(server: Served) -> None:
    status, headers, body = https(server.port, client_ctx(server.certs), "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "13")


def test_keep_alive_pipelining_and_bodies(server: Served) -> None:
    with tls_socket(server.port, client_ctx(server.certs)) as s:
        s.sendall(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        data = read_responses(s, 3)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
        assert b"Connection: close" not in data
        # Same connection, a chunked body in several writes, then Connection: close.
        s.sendall(b"PUT /4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab")
        s.sendall(b"\r\n0\r\n\r\nGET /5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        rest = read_until_closed(s)
    assert rest.count(b"hello world \n") == 2
    assert rest.endswith(b"Connection: close\r\n\r\nhello world \n")


@pytest.mark.parametrize("engine", ["openssl", "stdlib"])
def test_many_tls_records_in_one_segment(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]], engine: str
) -> None:
    """Three requests in three TLS records, then close_notify, all in one TCP send:
    each is answered, then the server closes (no more bytes will come to say so)."""
    env = {k: v for k, v in os.environ.items() if k != "MTLSKIT_TLS_ENGINE"}
    if engine == "stdlib":
        env["MTLSKIT_TLS_ENGINE"] = "stdlib"
    server = start_serve(procs, pki, tmp_path, "--quiet", env=env)
    ctx = client_ctx(server.certs)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        for i in range(3):
            tls.write(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # our close_notify; the server's comes later
        sock.sendall(outgoing.read())
        received = b""
        while chunk := sock.recv(65536):
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                while data := tls.read(65536):
                    received += data
    assert received.count(b"hello world \n") == 3


def test_http10_closes(server: Served) -> None:
    with tls_socket(server.port, client_ctx(server.certs)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"hello world \n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", 431),
    ],
    ids=["garbage", "bad-length", "bad-header", "long-url", "big-header", "many-headers"],
)
def test_bad_requests_get_4xx_and_close(server: Served, request_bytes: bytes, status: int) -> None:
    with tls_socket(server.port, client_ctx(server.certs)) as s:
        s.sendall(request_bytes)
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:100]
    assert b"Connection: close" in data
    # ... and the server still serves others.
    assert https(server.port, client_ctx(server.certs))[0] == 200


def test_quiet_logs_no_requests(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "--quiet")
    assert https(served.port, client_ctx(pki))[0] == 200
    assert served.stop() == 0
    log = served.log()
    assert "listen on https://127.0.0.1:" in log
    assert "new request" not in log


def test_allow_rules(pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    served = start_serve(
        procs,
        pki,
        tmp_path,
        "--allow-san",
        "URI:spiffe://example.org/ns/dev/*",
        "--allow-cn",
        "bob*",
    )
    assert https(served.port, client_ctx(pki, "client"))[0] == 200
    status, headers, _ = https(served.port, client_ctx(pki, "alice"))
    assert status == 403 and headers["connection"] == "close"
    log = served.wait_log("refused CN=alice SAN=DNS:alice.internal from 127.0.0.1:")
    assert "no --allow-cn/--allow-san rule matches" in log
    assert https(served.port, client_ctx(pki, "client"))[0] == 200  # still serving


def test_allow_cn_and_dns_san(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "--allow-cn", "ali?e", "--quiet")
    assert https(served.port, client_ctx(pki, "alice"))[0] == 200
    assert https(served.port, client_ctx(pki, "client"))[0] == 403
    served = start_serve(procs, pki, tmp_path, "--allow-san", "DNS:*.INTERNAL", "--quiet")
    assert https(served.port, client_ctx(pki, "alice"))[0] == 200
    assert https(served.port, client_ctx(pki, "client"))[0] == 403


def test_idle_and_handshake_timeouts(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(
        procs,
        pki,
        tmp_path,
        *("--idle-timeout", "0.3", "--handshake-timeout", "0.3", "--head-timeout", "0.3"),
    )
    with tls_socket(served.port, client_ctx(pki)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(s, 1).endswith(b"hello world \n")
        s.settimeout(5)
        assert read_until_closed(s) == b""  # closed by the server after ~0.3 s idle
    with socket.create_connection(("127.0.0.1", served.port)) as raw:
        raw.settimeout(5)
        assert raw.recv(100) == b""  # no handshake: dropped after ~0.3 s
    with tls_socket(served.port, client_ctx(pki)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow")  # a stalled request head
        s.settimeout(5)
        assert read_until_closed(s).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert served.stop() == 0


def test_sigint_stops_cleanly(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path)
    with tls_socket(served.port, client_ctx(pki)) as s:  # an idle keep-alive connection
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_responses(s, 1)
        assert served.stop(sig=2) == 0
        assert read_until_closed(s) == b""  # closed with close_notify
    assert "Traceback" not in served.log()


def _no_traceback(r: object) -> None:
    text = getattr(r, "stderr", "") + getattr(r, "stdout", "")
    assert "Traceback" not in text


def test_startup_errors_are_one_line(pki: Path, tmp_path: Path) -> None:
    port = str(free_port())
    r = run_cli("serve", "--certs", tmp_path / "none", "--port", port)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: certificate not found ({tmp_path / 'none' / 'server.crt'}): "
    )
    # A key that does not match the certificate.
    r = run_cli("serve", "--certs", pki, "--key", pki / "client.key", "--port", port)
    assert r.returncode == 1 and "private key does not match certificate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # Bad options and APP specs: usage errors, exit 2.
    for args in (
        ["--workers", "0"],
        ["--handshake-timeout", "0"],
        ["nocolon"],
        ["no_such_mod:app"],
    ):
        r = run_cli("serve", "--certs", pki, "--port", port, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
        _no_traceback(r)
    r = run_cli("serve", "--certs", pki, "--port", port, "--allow-san", "IP:10.*")
    assert r.returncode == 2 and "only DNS, URI and email" in r.stderr


def test_port_in_use_is_one_line(pki: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for workers in ("1", "2"):
            r = run_cli(
                "serve", "--certs", pki, "--host", "127.0.0.1", "--port", port, "--workers", workers
            )
            assert r.returncode == 1
            assert r.stderr.strip().splitlines() == [
                f"error: cannot listen on 127.0.0.1:{port}: the port is in use: "
                "stop the other server or choose another --port"
            ]


def test_app_import_errors(pki: Path, tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "noapp.py").write_text("x = 1\n")
    port = str(free_port())
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlskit",
            "serve",
            "broken_app:app",
            "--certs",
            pki,
            "--port",
            port,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "error: importing 'broken_app' failed: RuntimeError: boom: fix the app's module"
    )
    r = subprocess.run(
        [sys.executable, "-m", "mtlskit", "serve", "noapp:app", "--certs", pki, "--port", port],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "has no attribute 'app'" in r.stderr
    assert ROOT.exists()


def test_upgrade_requests_are_answered_then_closed(server: Served) -> None:
    with tls_socket(server.port, client_ctx(server.certs)) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        data = read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"Connection: close\r\n\r\nhello world \n")
