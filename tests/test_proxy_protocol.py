"""`--proxy-protocol`: the PROXY v2 header as real backends read it (a Python parser of
the spec, and nginx's `listen … proxy_protocol`)."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.proxy import (
    TCPBackend,
    TLSClient,
    client_ssl_context,
    close_clients,
    start_nginx,
    start_proxy,
)

Procs = list[subprocess.Popen[bytes]]

_close_clients = pytest.fixture(autouse=True)(close_clients)

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def parse_v2(conn: socket.socket) -> dict[str, object]:
    """Read and parse a PROXY v2 header as haproxy's proxy-protocol.txt (2.2) says."""
    head = recv_exactly(conn, 16)
    assert head[:12] == SIGNATURE
    ver_cmd, family, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    body = recv_exactly(conn, length)
    out: dict[str, object] = {"version": ver_cmd >> 4, "command": ver_cmd & 0xF}
    if family == 0x11:
        src, dst = (
            socket.inet_ntop(socket.AF_INET, body[:4]),
            socket.inet_ntop(socket.AF_INET, body[4:8]),
        )
        sport, dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    else:
        raise AssertionError(f"family {family:#x}")
    out.update(source=(src, sport), destination=(dst, dport))
    tlvs: dict[int, bytes] = {}
    while rest:
        kind, size = rest[0], struct.unpack("!H", rest[1:3])[0]
        tlvs[kind] = rest[3 : 3 + size]
        rest = rest[3 + size :]
    ssl_tlv = tlvs[0x20]
    out["ssl_client"], out["ssl_verify"] = ssl_tlv[0], struct.unpack("!I", ssl_tlv[1:5])[0]
    sub = ssl_tlv[5:]
    subs: dict[int, bytes] = {}
    while sub:
        kind, size = sub[0], struct.unpack("!H", sub[1:3])[0]
        subs[kind] = sub[3 : 3 + size]
        sub = sub[3 + size :]
    out["ssl_version"] = subs[0x21].decode()
    out["ssl_cn"] = subs[0x22].decode()
    out["ssl_cipher"] = subs[0x23].decode()
    return out


def test_python_backend_reads_the_header(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    seen: list[dict[str, object]] = []
    ready = threading.Event()

    def handler(conn: socket.socket) -> None:
        seen.append(parse_v2(conn))
        ready.set()
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(b"after the header: " + data)
        conn.shutdown(socket.SHUT_WR)

    b = TCPBackend(handler).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-cn", "client", "--proxy-protocol",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        c.send(b"payload")
        c.close_notify()
        assert c.recv_until_end() == b"after the header: payload"
        assert ready.wait(5)
        header = seen[0]
        assert header["version"] == 2 and header["command"] == 1
        assert header["source"] == c.sock.getsockname()
        assert header["destination"] == ("127.0.0.1", proxy.port)
        assert header["ssl_client"] == 0x07 and header["ssl_verify"] == 0
        assert header["ssl_version"] == "TLSv1.3"
        assert header["ssl_cn"] == "client"
        assert header["ssl_cipher"].startswith("TLS_")  # type: ignore[union-attr]
    finally:
        b.stop()


def test_nginx_reads_the_client_address(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    nginx = start_nginx(
        procs,
        tmp_path / "nginx",
        'location / { return 200 "pp=$proxy_protocol_addr:$proxy_protocol_port\\n"; }',
        listen_flags=" proxy_protocol",
        log_format="$proxy_protocol_addr $proxy_protocol_port $request",
    )
    proxy = start_proxy(
        procs, tmp_path, "server", "--target", f"127.0.0.1:{nginx.port}",
        "--certs", seed_certs_p256, "--allow-all", "--proxy-protocol",
    )  # fmt: skip
    c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
    c.send(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    reply = c.recv_until_end()
    host, port = c.sock.getsockname()
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert f"pp={host}:{port}\n".encode() in reply
    deadline = time.monotonic() + 5
    while f"{host} {port} GET /who" not in nginx.access_log():
        assert time.monotonic() < deadline, nginx.access_log()
        time.sleep(0.02)
