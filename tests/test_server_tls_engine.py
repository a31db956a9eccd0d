"""The server's TLS engines: the OpenSSL that cryptography bundles (default) and stdlib ssl.

Both must accept and refuse the same clients with the same reasons; the real
server must serve and resume sessions with either (MTLSKIT_TLS_ENGINE=stdlib).
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mtlskit.pki.seed import init_seed
from mtlskit.server.engine import TLSClosed
from mtlskit.server.openssl_engine import AVAILABLE
from tests.support.server import (
    client_ctx,
    engines,
    fetch_tls13,
    https,
    make_pki,
    start_serve,
    stop_all,
    talk,
)

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="cryptography lacks the SSL bindings")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


CLIENTS = [
    ("client", None, ("ok", "GET / HTTP/1.1", "ok", "TLSv1.3")),
    ("client", ssl.TLSVersion.TLSv1_2, ("ok", "GET / HTTP/1.1", "ok", "TLSv1.2")),
    (None, None, ("refused", "no_client_cert")),
    (None, ssl.TLSVersion.TLSv1_2, ("refused", "no_client_cert")),
    ("other", None, ("refused", "cert_untrusted")),
    ("expired", None, ("refused", "cert_expired")),
    ("server-only", None, ("refused", "cert_purpose")),
]


@pytest.mark.parametrize(("name", "tls_max", "expected"), CLIENTS)
def test_engines_accept_and_refuse_alike(
    pki: Path, name: str | None, tls_max: ssl.TLSVersion | None, expected: tuple[str, ...]
) -> None:
    for engine, make in engines(pki).items():
        assert talk(make(), client_ctx(pki, name, tls_max=tls_max)) == expected, engine


def test_close_notify_is_reported(pki: Path) -> None:
    session = engines(pki)["openssl"]()
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_ctx(pki).wrap_bio(into, out, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            session.feed(out.read())
            session.do_handshake()
            into.write(session.output())
    session.feed(out.read())
    assert session.do_handshake()
    with pytest.raises(ssl.SSLWantReadError):
        tls.unwrap()
    session.feed(out.read())
    with pytest.raises(TLSClosed):
        session.read()


def write_crl(certs: Path, path: Path, revoke: Path | None) -> Path:
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    if revoke is not None:
        serial = x509.load_pem_x509_certificate(revoke.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_crl_checked_by_both_engines(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    revoked = write_crl(certs, tmp_path / "revoked.crl", certs / "client.crt")
    for engine, make in engines(certs, crl=revoked).items():
        assert talk(make(), client_ctx(certs)) == ("refused", "cert_revoked"), engine
    empty = write_crl(certs, tmp_path / "empty.crl", None)
    for engine, make in engines(certs, crl=empty).items():
        assert talk(make(), client_ctx(certs))[0] == "ok", engine


@pytest.fixture(scope="module", params=["openssl", "stdlib"])
def served(
    request: pytest.FixtureRequest, pki: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": request.param}
    try:
        s = start_serve(procs, pki, tmp_path_factory.mktemp("log"), "--quiet", env=env)
        yield request.param, s.port
        assert s.stop() == 0
        assert "Traceback" not in s.log()
    finally:
        stop_all(procs)


def test_serve_resumes_tls13_sessions(served: tuple[str, int], pki: Path) -> None:
    _, port = served
    ctx = client_ctx(pki)
    assert https(port, ctx)[2] == b"hello world \n"
    reused, session = fetch_tls13(port, ctx, None)
    assert not reused
    reused, _ = fetch_tls13(port, ctx, session)
    assert reused
