"""Every way a request fails, each against a real server: the error class by stage
(mtlskit.errors), one line in plain words, and the CLI's options in it."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from mtlskit.client import get, request
from mtlskit.errors import (
    CertificateRefusedError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    HTTPStatusError,
    MtlsError,
    NameResolutionError,
    NetworkError,
    PeerVerificationError,
    PKIError,
    ProtocolError,
    ReadTimeout,
    Timeout,
    VerificationError,
)
from mtlskit.pki import profiles
from mtlskit.pki.ca import CA
from mtlskit.pki.keys import generate_key, private_key_pem
from mtlskit.tls import client_context
from tests.support.client import (
    EchoServer,
    OtherPKI,
    one_line_error,
)
from tests.support.processes import free_port, run_cli

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


# -- the server's certificate -------------------------------------------------------------


@pytest.mark.interop
def test_untrusted_server_says_who_issued_it(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    url = seed_server(seed_certs_p256)
    r = run_cli("get", url, "--certs", seed_certs_p256, "--cacert", other_pki.ca)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "the server's certificate is not trusted" in line
    assert "issued by 'C=TH, ST=RB, O=IT Sec, CN=CA'" in line
    assert "we trust 'O=Elsewhere, CN=Other CA'" in line
    assert f"({other_pki.ca})" in line
    assert "--cacert" in line


@pytest.mark.interop
def test_untrusted_server_from_a_ca_with_the_same_name(
    seed_certs_p256: Path, seed_certs_openssl: Path, seed_server: Callable[[Path], str]
) -> None:
    # Two seed PKIs: both CAs are "C=TH, ST=RB, O=IT Sec, CN=CA", with different keys.
    url = seed_server(seed_certs_openssl)
    r = run_cli("get", url, "--certs", seed_certs_openssl, "--cacert", seed_certs_p256 / "ca.crt")
    line = one_line_error(r.stderr)
    assert "issued by another CA that is also named 'C=TH, ST=RB, O=IT Sec, CN=CA'" in line


@pytest.mark.interop
def test_name_mismatch_lists_the_sans(
    seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    port = seed_server(seed_certs_p256).rsplit(":", 1)[1]
    r = run_cli(
        "get",
        f"https://wrong.example:{port}",
        "--resolve",
        f"wrong.example:{port}:127.0.0.1",
        "--certs",
        seed_certs_p256,
    )
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "not valid for 'wrong.example'" in line
    assert "DNS:localhost, DNS:www.example.com, IP:127.0.0.1" in line
    assert "use one of its names in the URL (or --resolve NAME:PORT:ADDRESS)" in line

    # The same --resolve with a name the certificate has works.
    ok = run_cli(
        "get",
        f"https://www.example.com:{port}",
        "--resolve",
        f"www.example.com:{port}:127.0.0.1",
        "--certs",
        seed_certs_p256,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hello world \n\n"


def test_ip_name_mismatch(
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    echo_server: Callable[..., EchoServer],
    tmp_path: Path,
) -> None:
    # A server certificate without the IP we dial.
    ca = CA.create("CN=Name CA", days=2)
    ca.save(tmp_path)
    ca.issue("server", "CN=svc", sans=["DNS:svc.internal"], days=2).save(tmp_path, "server")
    ca.issue("client", "CN=c", days=2).save(tmp_path, "client")
    srv = echo_server(tmp_path)
    with pytest.raises(VerificationError) as err:
        get(f"https://127.0.0.1:{srv.port}", certs=tmp_path)
    assert "not valid for '127.0.0.1': it names DNS:svc.internal" in str(err.value)
    # We refused the peer's certificate: a verification error AND a failed handshake.
    assert isinstance(err.value, PeerVerificationError)
    assert isinstance(err.value, HandshakeError)
    assert "(or resolve=NAME:PORT:ADDRESS)" in str(err.value)  # Python's words, not a flag


# -- our client certificate ---------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls12", "tls13"])
def test_go_server_refuses_a_client_cert_from_another_ca(
    version: ssl.TLSVersion,
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    seed_server: Callable[[Path], str],
) -> None:
    url = seed_server(seed_certs_p256)
    ctx = client_context(seed_certs_p256 / "ca.crt", other_pki.client_cert, other_pki.client_key)
    ctx.maximum_version = version
    with pytest.raises(CertificateRefusedError) as err:
        get(url, context=ctx)
    # Go sends "bad certificate"; with TLS 1.3 it arrives after our handshake is done.
    assert str(err.value).startswith(
        "the server refused our client certificate (sslv3 alert bad certificate)"
    )


@pytest.mark.interop
def test_get_refused_client_cert_names_its_issuer(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    url = seed_server(seed_certs_p256)
    r = run_cli(
        "get",
        url,
        "--cacert",
        seed_certs_p256 / "ca.crt",
        "--cert",
        other_pki.client_cert,  # its key, client.key, is found beside it
    )
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert line.startswith("error: the server refused our client certificate (")
    assert f"({other_pki.client_cert})" in line
    assert "does not trust its issuer 'O=Elsewhere, CN=Other CA'" in line


@pytest.mark.interop
def test_server_certificate_used_as_client_is_refused(
    seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    url = seed_server(seed_certs_p256)
    r = run_cli(
        "get",
        url,
        "--certs",
        seed_certs_p256,
        "--cert",
        seed_certs_p256 / "server.crt",
        "--key",
        seed_certs_p256 / "server.key",
    )
    line = one_line_error(r.stderr)
    assert "the server refused our client certificate" in line
    assert "not a client certificate (extendedKeyUsage has no clientAuth)" in line


@pytest.mark.interop
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls12", "tls13"])
def test_no_client_certificate(
    version: ssl.TLSVersion, seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    url = seed_server(seed_certs_p256)
    with pytest.raises(CertificateRefusedError) as err:
        get(url, certs=None, ca=seed_certs_p256 / "ca.crt")
    assert str(err.value).startswith("the server requires a client certificate and we sent none (")
    assert str(err.value).endswith(
        ": pass cert= and key=, or certs=DIR with client.crt and client.key"
    )
    assert err.value.settings == ("cert", "key", "certs")
    ctx = client_context(seed_certs_p256 / "ca.crt")  # a context alone: we cannot know
    ctx.maximum_version = version
    with pytest.raises(HandshakeError, match="the server refused our client certificate"):
        get(url, context=ctx)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls12", "tls13"])
def test_openssl_server_says_unknown_ca(
    version: ssl.TLSVersion,
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    echo_server: Callable[..., EchoServer],
) -> None:
    # A stdlib (OpenSSL) server that trusts only the other CA for clients.
    srv = echo_server(seed_certs_p256, client_ca=other_pki.ca, max_version=version)
    with pytest.raises(CertificateRefusedError) as err:
        get(srv.url, certs=seed_certs_p256)
    assert str(err.value).startswith(
        "the server refused our client certificate (tlsv1 alert unknown ca)"
    )
    assert "does not trust its issuer 'C=TH, ST=RB, O=IT Sec, CN=CA'" in str(err.value)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls12", "tls13"])
def test_mtlskit_serve_refusals(
    version: ssl.TLSVersion,
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    mtlskit_server: Callable[[Path], str],
) -> None:
    url = mtlskit_server(seed_certs_p256)
    ca = seed_certs_p256 / "ca.crt"
    ctx = client_context(ca, other_pki.client_cert, other_pki.client_key)
    ctx.maximum_version = version
    with pytest.raises(HandshakeError, match=r"^the server refused our client certificate \("):
        get(url, context=ctx)
    ctx = client_context(ca)  # no client certificate, and a context alone cannot say so
    ctx.maximum_version = version
    with pytest.raises(HandshakeError) as err:
        get(url, context=ctx)
    if version == ssl.TLSVersion.TLSv1_3:
        assert str(err.value).startswith(
            "the server refused our client certificate (tlsv13 alert certificate required)"
        )
    else:  # OpenSSL's TLS 1.2 answer to a missing certificate
        assert "(sslv3 alert handshake failure): the server may require a client cert" in str(
            err.value
        )
    with pytest.raises(HandshakeError, match=r"^the server requires a client certificate and we"):
        get(url, certs=None, ca=ca)
    # ... and it still serves a good client.
    assert get(url, certs=seed_certs_p256).text == "hello world \n"


# -- the network ----------------------------------------------------------------------------


def test_connection_refused(seed_certs_p256: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"  # a closed port
    r = run_cli("get", url, "--certs", seed_certs_p256)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert line.startswith("error: connection refused by 127.0.0.1:")
    assert "mtlskit serve" in line
    with pytest.raises(ConnectError) as err:
        get(url, certs=seed_certs_p256)
    assert isinstance(err.value, NetworkError)
    assert not isinstance(err.value, HandshakeError)  # no handshake was tried


def test_unknown_host(seed_certs_p256: Path) -> None:
    r = run_cli("get", "https://no-such-host.invalid:8443", "--certs", seed_certs_p256)
    assert r.returncode == 1
    assert "cannot resolve 'no-such-host.invalid'" in one_line_error(r.stderr)
    with pytest.raises(NameResolutionError, match=r"cannot resolve 'no-such-host\.invalid'"):
        get("https://no-such-host.invalid:8443", certs=seed_certs_p256)


def test_connect_timeout(seed_certs_p256: Path, full_backlog_port: int) -> None:
    url = f"https://127.0.0.1:{full_backlog_port}"
    with pytest.raises(ConnectTimeout) as err:
        get(url, certs=seed_certs_p256, timeout=0.3)
    assert isinstance(err.value, Timeout) and isinstance(err.value, NetworkError)
    assert str(err.value) == (
        f"no connection to 127.0.0.1:{full_backlog_port} within 0.3 s: "
        "check the address and port, or raise the timeout (timeout=)"
    )
    r = run_cli("get", url, "--certs", seed_certs_p256, "--timeout", "0.3")
    assert r.returncode == 1
    assert one_line_error(r.stderr).endswith(
        "within 0.3 s: check the address and port, or raise the timeout (--timeout)"
    )


def test_handshake_timeout(seed_certs_p256: Path, silent_port: int) -> None:
    # The kernel accepts the connection; nobody ever answers the ClientHello.
    url = f"https://127.0.0.1:{silent_port}"
    r = run_cli("get", url, "--certs", seed_certs_p256, "--timeout", "0.3")
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert f"no TLS handshake with 127.0.0.1:{silent_port} within 0.3 s" in line
    assert line.endswith(": check that the port serves TLS, or raise the timeout (--timeout)")
    with pytest.raises(ConnectTimeout, match="no TLS handshake with"):
        get(url, certs=seed_certs_p256, timeout=0.3)


def test_response_timeout(seed_certs_p256: Path, echo_server: Callable[..., EchoServer]) -> None:
    srv = echo_server(seed_certs_p256)
    r = run_cli("get", srv.url + "/hang", "--certs", seed_certs_p256, "--timeout", "0.3")
    assert r.returncode == 1
    assert "no response from localhost:" in one_line_error(r.stderr)


def test_read_timeout(seed_certs_p256: Path, canned_server: int) -> None:
    # A TLS server that completes the handshake, reads the request, and never answers.
    url = f"https://localhost:{canned_server}/silent"
    with pytest.raises(ReadTimeout) as err:
        get(url, certs=seed_certs_p256, timeout=0.3)
    assert isinstance(err.value, Timeout)
    assert str(err.value).startswith(f"no response from localhost:{canned_server} within 0.3 s")
    assert err.value.settings == ("timeout",)
    r = run_cli("get", url, "--certs", seed_certs_p256, "--timeout", "0.3")
    assert one_line_error(r.stderr).endswith(
        ": check the server's log, or raise the timeout (--timeout)"
    )


def test_plain_http_server(seed_certs_p256: Path, echo_server: Callable[..., EchoServer]) -> None:
    srv = echo_server(None, tls=False)
    r = run_cli("get", f"https://127.0.0.1:{srv.port}", "--certs", seed_certs_p256)
    assert r.returncode == 1
    assert f"127.0.0.1:{srv.port} does not speak TLS" in one_line_error(r.stderr)
    with pytest.raises(HandshakeError, match="does not speak TLS"):
        get(f"https://127.0.0.1:{srv.port}", certs=seed_certs_p256)


# -- the answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/not-http", "invalid HTTP response from localhost:{port}: BadStatusLine"),
        ("/bad-status", "invalid HTTP response from localhost:{port}: BadStatusLine"),
        ("/nothing", "localhost:{port} closed the connection without answering"),
        ("/short-body", "localhost:{port} closed the connection without answering"),
        (
            "/short-body",
            "localhost:{port} closed the connection without answering in full "
            "(after 9 of 100 bytes of the body)",
        ),
        (
            "/chunked-truncated",
            "localhost:{port} closed the connection without answering in full "
            "(before the last chunk of the body)",
        ),
        ("/two-lengths", "invalid HTTP response from localhost:{port}: duplicate Content-Length"),
        ("/bad-chunk", "invalid HTTP response from localhost:{port}: invalid character in chunk"),
        (
            "/long-header",
            "invalid HTTP response from localhost:{port}: the header section is longer than 64 KiB",
        ),
        ("/switching", "localhost:{port} answered 101 Switching Protocols"),
        ("/rtsp", "invalid HTTP response from localhost:{port}: BadStatusLine RTSP/1.0 200 OK"),
    ],
)
def test_invalid_http_answer(
    path: str, expected: str, seed_certs_p256: Path, canned_server: int
) -> None:
    with pytest.raises(ProtocolError) as err:
        get(f"https://localhost:{canned_server}{path}", certs=seed_certs_p256)
    assert str(err.value).startswith(expected.format(port=canned_server))
    assert not isinstance(err.value, HandshakeError | NetworkError)


def test_http_status_error_carries_the_response(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer]
) -> None:
    srv = echo_server(seed_certs_p256)
    url = f"{srv.url}/status/403"
    resp = request("GET", url, certs=seed_certs_p256)  # any status is a Response
    assert resp.status == 403
    with pytest.raises(HTTPStatusError) as err:
        resp.raise_for_status()
    assert err.value.response is resp
    assert err.value.response.status == 403
    assert err.value.response.json()["path"] == "/status/403"
    assert str(err.value) == f"the server answered 403 Forbidden ({url}): see the response body"
    ok = get(srv.url, certs=seed_certs_p256)
    assert ok.raise_for_status() is ok


def test_every_class_is_an_mtls_error() -> None:
    import mtlskit
    import mtlskit.errors

    for name in mtlskit.errors.__all__:
        obj = getattr(mtlskit.errors, name)
        if isinstance(obj, type) and name != "Setting":
            assert issubclass(obj, MtlsError), name
            assert getattr(mtlskit, name) is obj, name  # the public surface has them all
    assert issubclass(PeerVerificationError, VerificationError)
    assert ConfigError.exit_code == 2 and HTTPStatusError.exit_code == 1


# -- our files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("ca.crt", "CA certificate not found"),
        ("client.crt", "client certificate not found"),
        ("client.key", "client key not found"),
    ],
)
def test_missing_files(missing: str, expected: str, seed_certs_p256: Path, tmp_path: Path) -> None:
    import shutil

    certs = tmp_path / "certs"
    shutil.copytree(seed_certs_p256, certs)
    (certs / missing).unlink()
    r = run_cli("get", f"https://127.0.0.1:{free_port()}", "--certs", certs)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert line.startswith(f"error: {expected} ({certs / missing}): run mtlskit init")
    setting, flag = {"ca.crt": ("ca", "--cacert"), "client.crt": ("cert", "--cert")}.get(
        missing, ("key", "--key")
    )
    assert line.endswith(f": run mtlskit init, or point --certs or {flag} at it")
    with pytest.raises(PKIError) as err:
        get("https://localhost:1", certs=certs)
    # The library speaks of its arguments; only the CLI names its options.
    assert str(err.value).endswith(f": run mtlskit init, or point certs= or {setting}= at it")
    assert err.value.settings == ("certs", setting)
    assert "--" not in str(err.value)


def test_untrusted_server_in_the_library_names_no_option(
    seed_certs_p256: Path, other_pki: OtherPKI, echo_server: Callable[..., EchoServer]
) -> None:
    srv = echo_server(seed_certs_p256)
    with pytest.raises(PeerVerificationError) as err:
        get(srv.url, certs=seed_certs_p256, ca=other_pki.ca)
    assert str(err.value).endswith(
        f"({other_pki.ca}): pass ca= with the CA that issued it, "
        "or give the server a certificate from our CA"
    )
    r = run_cli("get", srv.url, "--certs", seed_certs_p256, "--cacert", other_pki.ca)
    assert one_line_error(r.stderr).endswith(
        f"({other_pki.ca}): pass --cacert with the CA that issued it, "
        "or give the server a certificate from our CA"
    )


def test_bad_arguments_in_the_library_name_no_option(seed_certs_p256: Path) -> None:
    with pytest.raises(ConfigError) as err:
        get("https://localhost:1", certs=seed_certs_p256, resolve="nonsense")
    assert str(err.value) == "invalid resolve='nonsense': use HOST:PORT:ADDRESS"
    with pytest.raises(ConfigError) as err:
        get("https://localhost:1", certs=seed_certs_p256, timeout=0)
    assert str(err.value) == "timeout must be positive, not 0: e.g. timeout=10"
    with pytest.raises(ConfigError) as err:
        get("https://localhost:1", certs=None)
    assert str(err.value) == "no CA to trust: pass certs=DIR or ca=FILE"


def test_no_certs_folder(tmp_path: Path) -> None:
    r = run_cli("get", cwd=tmp_path)  # the seed's defaults, in a folder without certs/
    assert r.returncode == 1
    assert one_line_error(r.stderr) == (
        "error: CA certificate not found (certs/ca.crt): "
        "run mtlskit init, or point --certs or --cacert at it"
    )


def test_key_that_does_not_match(seed_certs_p256: Path, other_pki: OtherPKI) -> None:
    r = run_cli(
        "get",
        "--certs",
        seed_certs_p256,
        "--cert",
        seed_certs_p256 / "client.crt",
        "--key",
        other_pki.client_key,
    )
    assert r.returncode == 1
    assert "private key does not match certificate" in one_line_error(r.stderr)


def _expired_leaf(
    ca: CA, profile: str, name: str, folder: Path, sans: list[str]
) -> x509.Certificate:
    """A certificate that expired yesterday (CA.issue refuses to make one), as NAME.crt/.key."""
    key = generate_key("p256")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(f"CN={name}"))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
    )
    for ext, critical in profiles.leaf_extensions(
        profiles.check_profile(profile),
        key.public_key(),
        sans=[x509.DNSName(s) for s in sans],
        issuer=ca.certificate,
    ):
        builder = builder.add_extension(ext, critical)
    cert = builder.sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    (folder / f"{profile}.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    (folder / f"{profile}.key").write_bytes(private_key_pem(key))
    return cert


def test_expired_server_certificate(echo_server: Callable[..., EchoServer], tmp_path: Path) -> None:
    ca = CA.create("CN=Clock CA", days=30)
    ca.save(tmp_path)
    ca.issue("client", "CN=c", days=2).save(tmp_path, "client")
    cert = _expired_leaf(ca, "server", "localhost", tmp_path, ["localhost"])
    srv = echo_server(tmp_path)
    with pytest.raises(VerificationError) as err:
        get(srv.url, certs=tmp_path)
    expected = f"the server's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    assert str(err.value).startswith(expected)


@pytest.mark.interop
def test_expired_client_certificate(seed_server: Callable[[Path], str], tmp_path: Path) -> None:
    ca = CA.create("CN=Clock CA", days=30)
    ca.save(tmp_path)
    ca.issue("server", "CN=localhost", sans=["DNS:localhost"], days=2).save(tmp_path, "server")
    cert = _expired_leaf(ca, "client", "late", tmp_path, [])
    url = seed_server(tmp_path)
    r = run_cli("get", url, "--certs", tmp_path)
    line = one_line_error(r.stderr)
    assert line.startswith("error: the server refused our client certificate (")
    assert f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}: renew it" in line
