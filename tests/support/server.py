"""Helpers for the server tests (no tests here): start `mtlskit serve`, talk TLS to it."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtlskit.pki.ca import CA
from mtlskit.pki.keys import private_key_pem
from mtlskit.server.engine import StdlibSession, TLSFailure, TLSSession
from mtlskit.server.openssl_engine import OpenSSLSession, context_from
from mtlskit.tls import client_context, server_context
from tests.support.processes import ROOT, Running, free_port, start_cli


@dataclass
class Served(Running):
    """A running `mtlskit serve` process."""

    certs: Path


def start_serve(
    procs: list[subprocess.Popen[bytes]],
    certs: Path,
    log_dir: Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Served:
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    argv: list[str | os.PathLike[str]] = ["serve", "--certs", certs, "--host", "127.0.0.1"]
    proc = start_cli(
        procs,
        [*argv, "--port", str(port), *args],
        port=port,
        log_path=log_path,
        cwd=cwd or ROOT,
        env=env,
    )
    return Served(proc, port, log_path, certs)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """For module-scoped fixtures (the ``procs`` fixture is per test)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def client_ctx(
    certs: Path, name: str | None = "client", *, tls_max: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client context trusting certs/ca.crt, presenting certs/<name>.crt (or nothing)."""
    if name is None:
        ctx = client_context(certs / "ca.crt")
    else:
        ctx = client_context(certs / "ca.crt", certs / f"{name}.crt", certs / f"{name}.key")
    if tls_max is not None:
        ctx.maximum_version = tls_max
    return ctx


def https(
    port: int,
    ctx: ssl.SSLContext,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def tls_socket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def read_until_closed(sock: ssl.SSLSocket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes (close_notify or EOF)."""
    parts = []
    total = 0
    while total < limit:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def read_responses(sock: ssl.SSLSocket, count: int) -> bytes:
    """Read until ``count`` complete hello-world responses arrived."""
    data = b""
    while data.count(b"hello world \n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600 if name.endswith(".key") else 0o644)


def make_pki(folder: Path) -> Path:
    """A seed-layout folder plus the bad clients the refusal tests need.

    client.*        a normal client (CN=client, SAN URI + email)
    alice.*         CN=alice, SAN DNS:alice.internal
    server-only.*   a serverAuth-only certificate from the right CA
    expired.*       a client certificate that expired yesterday
    other.*         a client certificate from another CA
    """
    ca = CA.create("/CN=Test CA", key_type="p256", days=30)
    server = ca.issue(
        "server", "/CN=localhost", sans=["DNS:localhost", "IP:127.0.0.1"], key_type="p256"
    )
    client = ca.issue(
        "client",
        "/O=Dev/CN=client",
        sans=["URI:spiffe://example.org/ns/dev/sa/client", "email:client@example.org"],
        key_type="p256",
    )
    alice = ca.issue("client", "/CN=alice", sans=["DNS:alice.internal"], key_type="p256")
    server_only = ca.issue("server", "/CN=client", sans=["DNS:client"], key_type="p256")
    other_ca = CA.create("/CN=Other CA", key_type="p256", days=30)
    other = other_ca.issue("client", "/CN=client", key_type="p256")
    # An expired client certificate: ca.issue refuses past dates, so build it by hand.
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=client"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    files = {
        "ca.crt": ca.cert_pem,
        "server.crt": server.cert_pem,
        "server.key": server.key_pem(),
        "client.crt": client.cert_pem,
        "client.key": client.key_pem(),
        "alice.crt": alice.cert_pem,
        "alice.key": alice.key_pem(),
        "server-only.crt": server_only.cert_pem,
        "server-only.key": server_only.key_pem(),
        "other.crt": other.cert_pem,
        "other.key": other.key_pem(),
        "expired.crt": expired.public_bytes(serialization.Encoding.PEM),
        "expired.key": private_key_pem(key),
        "other-ca.crt": other_ca.cert_pem,
    }
    write_files(folder, files)
    return folder


def fetch_tls13(
    port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession]:
    """One request on a new connection: was ``session`` resumed, and the session it ends with."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.endswith(b"hello world \n")
        assert s.version() == "TLSv1.3"
        assert s.session is not None
        return s.session_reused, s.session


def engines(pki: Path, crl: Path | None = None) -> dict[str, Callable[[], TLSSession]]:
    files = (pki / "server.crt", pki / "server.key", pki / "ca.crt")
    policy = server_context(*files, crl=crl)
    twin = context_from(policy, *files, crl=crl)
    return {"stdlib": lambda: StdlibSession(policy), "openssl": lambda: OpenSSLSession(twin)}


def talk(server: TLSSession, client: ssl.SSLContext) -> tuple[str, ...]:
    """A handshake and one request over memory buffers; the server's view of it."""
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(into, out, server_hostname="localhost")
    for _ in range(8):
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the server's alert; its own view is what we compare
        server.feed(out.read())
        try:
            done = server.do_handshake()
        except TLSFailure as failure:
            return ("refused", failure.reason)
        into.write(server.output())
        if done:
            break
    tls.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    server.feed(out.read())
    try:
        request = server.read()
    except TLSFailure as failure:  # TLS 1.3: a refused certificate shows after the handshake
        return ("refused", failure.reason)
    server.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    into.write(server.output())
    reply = tls.read(1024).rsplit(b"\r\n", 1)[-1]
    chain = server.peer_chain_der()
    assert chain and chain[0] == server.peer_certificate_der()
    return ("ok", request.split(b"\r\n")[0].decode(), reply.decode(), str(server.version()))
