"""`mtlskit serve` against real peers: the Go seed client, curl, openssl s_client, Python ssl.

Certificates from `mtlskit init` and from the seed's exact openssl commands
(RSA-4096, X.509 v1 client certificate), plus the clients that must be refused
while the server keeps serving the others.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import go_binary
from tests.support.server import (
    Served,
    client_ctx,
    https,
    make_pki,
    start_serve,
    stop_all,
    tls_socket,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


def _serve(certs: Path, tmp: Path) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = start_serve(procs, certs, tmp)
        yield served
        assert served.stop() == 0
        assert "Traceback" not in served.log()
    finally:
        stop_all(procs)


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(pki, tmp_path_factory.mktemp("log"))


@pytest.fixture(scope="module", params=["p256", "openssl"])
def seed_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`mtlskit serve` on the seed's file set, made by `mtlskit init` or by openssl."""
    certs = request.getfixturevalue(
        "seed_certs_p256" if request.param == "p256" else "seed_certs_openssl"
    )
    yield from _serve(certs, tmp_path_factory.mktemp("log"))


def _curl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_go_seed_client(seed_server: Served) -> None:
    r = subprocess.run(
        [
            go_binary("seed-client"),
            "-url",
            f"https://localhost:{seed_server.port}",
            "-certs",
            seed_server.certs,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello world \n\n"
    seed_server.wait_log("new request GET / from CN=client")


def test_curl_with_client_certificate(seed_server: Served) -> None:
    c = seed_server.certs
    r = _curl(
        "--cacert", c / "ca.crt", "--cert", c / "client.crt", "--key", c / "client.key",
        f"https://localhost:{seed_server.port}/curl",
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "hello world \n"), r.stderr


def test_curl_without_client_certificate_is_refused(seed_server: Served) -> None:
    c = seed_server.certs
    r = _curl("--cacert", c / "ca.crt", f"https://localhost:{seed_server.port}/")
    assert r.returncode != 0 and r.stdout == ""
    seed_server.wait_log("the client sent no certificate (no_client_cert)")
    r = _curl(
        "--cacert", c / "ca.crt", "--cert", c / "client.crt", "--key", c / "client.key",
        f"https://localhost:{seed_server.port}/",
    )  # fmt: skip
    assert r.stdout == "hello world \n"


def test_openssl_s_client(seed_server: Served) -> None:
    c = seed_server.certs
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{seed_server.port}",
            "-servername",
            "localhost",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            c / "ca.crt",
            "-cert",
            c / "client.crt",
            "-key",
            c / "client.key",
            "-quiet",
        ],
        input=b"GET /s_client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert r.stdout.endswith(b"\r\n\r\nhello world \n")


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_client_both_tls_versions(seed_server: Served, tls: ssl.TLSVersion) -> None:
    ctx = client_ctx(seed_server.certs, tls_max=tls)
    with tls_socket(seed_server.port, ctx) as s:
        assert s.version() == ("TLSv1.2" if tls == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert s.recv(4096).endswith(b"hello world \n")


REFUSED = [
    (None, "no_client_cert"),
    ("other", "cert_untrusted"),
    ("expired", "cert_expired"),
    ("server-only", "cert_purpose"),
]


@pytest.mark.parametrize(("name", "reason"), REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_over_tls12_at_handshake(server: Served, name: str | None, reason: str) -> None:
    ctx = client_ctx(server.certs, name, tls_max=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        tls_socket(server.port, ctx).close()
    server.wait_log(f"({reason})")
    assert https(server.port, client_ctx(server.certs))[0] == 200  # others still served


@pytest.mark.parametrize(("name", "reason"), REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_over_tls13_shows_on_first_read(
    server: Served, name: str | None, reason: str
) -> None:
    """In TLS 1.3 the client's handshake completes before the server checks its
    certificate: the refusal (an alert) only shows when the client first reads."""
    ctx = client_ctx(server.certs, name, tls_max=ssl.TLSVersion.TLSv1_3)
    with tls_socket(server.port, ctx) as s:  # no error here
        assert s.version() == "TLSv1.3"
        # The alert may already have arrived while sending.
        with contextlib.suppress(ssl.SSLError, BrokenPipeError, ConnectionResetError):
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises((ssl.SSLError, ConnectionResetError)) as info:
            if s.recv(4096) == b"":
                raise ConnectionResetError("closed without response")
    assert isinstance(info.value, ssl.SSLError), info.value
    assert "alert" in str(info.value).lower()
    server.wait_log(f"({reason})")
    assert https(server.port, client_ctx(server.certs))[0] == 200


def test_curl_refusals(server: Served) -> None:
    c = server.certs
    for name in ("other", "expired", "server-only"):
        r = _curl(
            "--cacert", c / "ca.crt", "--cert", c / f"{name}.crt", "--key", c / f"{name}.key",
            f"https://localhost:{server.port}/",
        )  # fmt: skip
        assert r.returncode != 0 and r.stdout == "", name
    assert "alert" in r.stderr or "error" in r.stderr


def test_go_client_with_wrong_ca_certificate_is_refused(server: Served, tmp_path: Path) -> None:
    """The Go seed client presenting a certificate from another CA."""
    folder = tmp_path / "certs"
    folder.mkdir()
    shutil.copy(server.certs / "ca.crt", folder / "ca.crt")
    shutil.copy(server.certs / "other.crt", folder / "client.crt")
    shutil.copy(server.certs / "other.key", folder / "client.key")
    r = subprocess.run(
        [go_binary("seed-client"), "-url", f"https://localhost:{server.port}", "-certs", folder],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "error making get request" in r.stderr
