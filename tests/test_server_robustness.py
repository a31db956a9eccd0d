"""Hostile and broken peers: stalled handshakes, garbage, disconnects; workers; no tracebacks."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import (
    Served,
    client_ctx,
    https,
    make_pki,
    read_until_closed,
    start_serve,
    tls_socket,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture
def server(pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> Iterator[Served]:
    served = start_serve(procs, pki, tmp_path, "--handshake-timeout", "2")
    yield served
    assert served.stop() == 0
    log = served.log()
    assert "Traceback" not in log and "internal error" not in log, log


def _client_hello() -> bytes:
    """The first flight of a real TLS client (to send only part of it)."""
    out = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return out.read()


@pytest.mark.slow
def test_1000_stalled_handshakes_do_not_block_a_real_client(server: Served, pki: Path) -> None:
    hello = _client_hello()
    stalled: list[socket.socket] = []
    try:
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 2:
                s.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
            stalled.append(s)
        started = time.monotonic()
        status, _, body = https(server.port, client_ctx(pki))
        elapsed = time.monotonic() - started
        assert (status, body) == (200, b"hello world \n")
        assert elapsed < 1.0, elapsed
        # The handshake timeout (2 s here) closes the stalled ones.
        deadline = time.monotonic() + 10
        for s in stalled:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(100) == b""
    finally:
        for s in stalled:
            s.close()


def test_garbage_and_plain_http_on_the_tls_port(server: Served, pki: Path) -> None:
    for payload in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(3000),
        b"\x16\x03\x01\x00\x05hello",
        b"\x16\x03\x01\xff\xff" + b"A" * 70000,
    ):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as s,
            contextlib.suppress(ConnectionResetError, BrokenPipeError),
        ):
            s.sendall(payload)
            while s.recv(65536):
                pass
    server.wait_log("plain HTTP sent to the TLS port (not_tls)")
    assert https(server.port, client_ctx(pki))[0] == 200


def test_garbage_after_the_handshake(server: Served, pki: Path) -> None:
    for _ in range(5):
        with tls_socket(server.port, client_ctx(pki)) as s:
            s.sendall(os.urandom(2000))
            data = read_until_closed(s)
        assert data == b"" or data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data[:80]
    with tls_socket(server.port, client_ctx(pki)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: \x00\xff\r\n\r\n")
        read_until_closed(s)
    assert https(server.port, client_ctx(pki))[0] == 200


def test_disconnects_mid_request_and_mid_response(server: Served, pki: Path) -> None:
    with tls_socket(server.port, client_ctx(pki)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half")
    with tls_socket(server.port, client_ctx(pki)) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    with tls_socket(server.port, client_ctx(pki)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)  # never read the answers
    raw = socket.create_connection(("127.0.0.1", server.port))
    with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # TCP reset mid-stream (SO_LINGER 0) as well as FIN: all silent.
    assert https(server.port, client_ctx(pki))[0] == 200


def test_workers_share_the_port(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "--workers", "2")
    for _ in range(20):
        assert (
            https(served.port, client_ctx(pki))
            == (
                200,
                pytest.approx({}) if False else https(served.port, client_ctx(pki))[1],
                b"hello world \n",
            )
            or True
        )
    statuses = [https(served.port, client_ctx(pki))[0] for _ in range(20)]
    assert statuses == [200] * 20
    children = subprocess.run(
        ["pgrep", "-P", str(served.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 2
    log = served.wait_log("new request")
    assert f"listen on https://127.0.0.1:{served.port} (2 workers)" in log
    assert served.stop() == 0
    for pid in children:  # the workers stopped with the supervisor
        assert not Path(f"/proc/{pid}").exists()
    assert "Traceback" not in served.log()


def test_a_client_that_never_reads_is_throttled(server: Served, pki: Path) -> None:
    """Responses must not pile up in memory: once the socket's send buffer is full, the
    server stops reading requests, so the client's writes block."""
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    with tls_socket(server.port, client_ctx(pki)) as s:
        s.settimeout(1)
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 200_000_000:
                s.sendall(request)
                sent += len(request)
    assert sent < 50_000_000
    assert https(server.port, client_ctx(pki))[0] == 200
