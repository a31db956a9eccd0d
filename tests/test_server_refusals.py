"""Refusals arrive: a client refused in the handshake reads the alert, never a reset.

The server sends its fatal alert, shuts down its write side and reads (and drops)
what the client still sends for a short while before it closes (a lingering
close, as nginx does): closing with the client's bytes unread would answer them
with a TCP reset, which can destroy the alert before the client reads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlskit.server.protocol import LINGER_SECONDS
from tests.support.server import Served, client_ctx, make_pki, start_serve, stop_all

REFUSALS = 200

# What a client without a certificate reads: TLS 1.3 sends certificate_required after
# the client's handshake is done (so it shows on the first read), TLS 1.2 a
# handshake_failure during it.
ALERTS = {
    ssl.TLSVersion.TLSv1_3: "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    ssl.TLSVersion.TLSv1_2: "SSLV3_ALERT_HANDSHAKE_FAILURE",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module", params=["openssl", "stdlib"])
def served(
    request: pytest.FixtureRequest, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": request.param}
    try:
        s = start_serve(procs, pki, tmp_path_factory.mktemp("log"), "--quiet", env=env)
        yield s
        assert s.stop() == 0
        assert "Traceback" not in s.log()
    finally:
        stop_all(procs)


def refused_once(port: int, ctx: ssl.SSLContext) -> str:
    """One connection without a certificate that sends a request as soon as it can: the
    alert it reads, then how the connection ends (a reset from the server is named)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with contextlib.closing(raw):
        tls = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        try:
            tls.do_handshake()
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return f"read {tls.recv(4096)[:20]!r}"
        except ssl.SSLError as exc:
            outcome = str(exc.reason)
        except OSError as exc:  # ConnectionResetError, BrokenPipeError: the alert was lost
            return type(exc).__name__
        # Done sending: the server must answer with its FIN, and nothing we sent (our
        # request) may have met a closed socket, which resets the connection.
        sock = socket.socket(fileno=os.dup(tls.fileno()))
        tls.close()
        with sock:
            sock.settimeout(10)
            try:
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
            except OSError as exc:
                return f"{outcome} then {errno.errorcode.get(exc.errno or 0, repr(exc))}"
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return f"{outcome} then {errno.errorcode[err]}" if err else outcome


@pytest.mark.parametrize("version", list(ALERTS), ids=["tls13", "tls12"])
def test_every_refused_client_reads_the_alert(
    served: Served, pki: Path, version: ssl.TLSVersion
) -> None:
    ctx = client_ctx(pki, None, tls_max=version)
    ctx.minimum_version = version
    outcomes = Counter(refused_once(served.port, ctx) for _ in range(REFUSALS))
    assert outcomes == {ALERTS[version]: REFUSALS}


def test_a_refused_client_that_never_closes_is_closed_after_the_linger(
    served: Served, pki: Path
) -> None:
    raw = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    tls = client_ctx(pki, None).wrap_socket(raw, server_hostname="localhost")
    with tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            tls.recv(4096)
        began = time.monotonic()
        sock = socket.socket(fileno=os.dup(tls.fileno()))
    with sock:
        sock.settimeout(10)
        assert sock.recv(4096) == b""  # the server's FIN came right after the alert
        # It still reads what we send (no reset) until it closes after the linger; then
        # the next bytes meet a closed socket, and the one after fails with the reset.
        waited = 0.0
        while waited < LINGER_SECONDS + 5:
            try:
                sock.send(b"bytes the server drops")
            except OSError:
                break
            time.sleep(0.02)
            waited = time.monotonic() - began
    assert LINGER_SECONDS - 0.5 < waited < LINGER_SECONDS + 3
    assert refused_once(served.port, client_ctx(pki, None)) == ALERTS[ssl.TLSVersion.TLSv1_3]
