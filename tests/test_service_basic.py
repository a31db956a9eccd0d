"""`mtlskit ca serve`: start, anonymous routes (health, roots, CRL), bootstrap, the
service's own certificate, body limit, bad input; ServerConfig(client_cert="optional")."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.pki.seed import init_seed
from mtlskit.server.config import ServerConfig
from mtlskit.server.lifecycle import Server, prepare
from mtlskit.tls import client_context, pinning_context
from tests.support.processes import free_port, run_cli
from tests.support.service import Service, error_of, start_service


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    init_seed(folder)
    return folder


@pytest.fixture(params=["openssl", "stdlib"], ids=["default", "stdlib"])
def engine_env(request: pytest.FixtureRequest) -> dict[str, str]:
    return {"MTLSKIT_TLS_ENGINE": request.param}


def test_anonymous_routes_bootstrap_and_crl(
    ca_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]], engine_env: dict[str, str]
) -> None:
    service = start_service(procs, ca_dir, env=engine_env)
    fp = service.fingerprint()
    assert len(fp) == 64

    # bootstrap: ca.crt only with the right fingerprint
    out = tmp_path / "client"
    bad = run_cli("ca", "bootstrap", service.url, "--fingerprint", "0" * 64, "--dir", out)
    assert bad.returncode == 1
    assert "not the fingerprint given" in bad.stderr and "Traceback" not in bad.stderr
    assert not (out / "ca.crt").exists()
    good = run_cli("ca", "bootstrap", service.url, "--fingerprint", fp.upper(), "--dir", out)
    assert good.returncode == 0, good.stderr
    root = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert root == ca_cert

    # a client WITHOUT a certificate, trusting only the bootstrapped root
    anon = client_context(out / "ca.crt")
    health = service.get("/healthz", anon)
    assert health.status == 200 and health.json() == {"status": "ok"}
    roots = service.get("/roots.pem", anon)
    assert roots.status == 200 and roots.body == (out / "ca.crt").read_bytes()
    crl_resp = service.get("/crl", anon)
    assert crl_resp.status == 200
    assert crl_resp.header("content-type") == "application/pkix-crl"
    crl = x509.load_der_x509_crl(crl_resp.body)
    assert crl.issuer == ca_cert.subject
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    # the same CRL while nothing changed (cached, not a new number per request)
    assert service.get("/crl", anon).body == crl_resp.body

    # a client WITH a certificate reaches them too
    with_cert = service.context(ca_dir / "client.crt", ca_dir / "client.key")
    assert service.get("/healthz", with_cert).status == 200

    # unknown route, wrong method
    assert service.get("/nope", anon).status == 404
    assert service.post("/roots.pem", {}, anon).status == 405

    # the service's own certificate: issued by the CA at first start, for localhost
    served = x509.load_pem_x509_certificate((ca_dir / "service" / "server.crt").read_bytes())
    assert served.issuer == ca_cert.subject
    assert oct((ca_dir / "service" / "server.key").stat().st_mode & 0o777) == "0o600"
    log = service.log()
    assert "issue route=service" in log and "Traceback" not in log
    # No line per request by default: the audit log is the record.
    assert "new request" not in log


def test_log_requests_option(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    service = start_service(procs, ca_dir, "--log-requests")
    assert service.get("/healthz").status == 200
    service.wait_log("new request GET /healthz")


def test_service_certificate_kept_across_restarts(
    ca_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    first = start_service(procs, ca_dir)
    assert first.stop() == 0
    cert = (ca_dir / "service" / "server.crt").read_bytes()
    second = start_service(procs, ca_dir)
    assert second.get("/healthz").status == 200
    assert (ca_dir / "service" / "server.crt").read_bytes() == cert
    assert "issue route=service" not in second.log().split("listen on")[-1]
    # a --url with another host: re-issued with that name too
    assert second.stop() == 0
    third = start_service(procs, ca_dir, "--url", "https://ca.internal:9443")
    served = x509.load_pem_x509_certificate((ca_dir / "service" / "server.crt").read_bytes())
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ca.internal" in names.get_values_for_type(x509.DNSName)
    assert 'reason="names changed"' in third.log()


def _raw(service: Service, data: bytes) -> bytes:
    ctx = pinning_context()
    import socket

    with (
        socket.create_connection(("127.0.0.1", service.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(data)
        out = b""
        while chunk := tls.recv(65536):
            out += chunk
        return out


def test_body_limit_and_bad_input(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    service = start_service(procs, ca_dir, "--max-body", "2048")
    # declared too large: 413 before reading
    conn = http.client.HTTPSConnection("localhost", service.port, context=service.context())
    conn.request("POST", "/enroll", body=b"x" * 4096, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413
    assert b"larger than 2048 bytes" in resp.read()
    conn.close()
    # chunked, no length: 413 once past the limit
    chunk = b"x" * 1500
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    out = _raw(
        service,
        b"POST /enroll HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n\r\n" + body,
    )
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    # the service keeps serving
    assert service.get("/healthz").status == 200
    assert "Traceback" not in service.log()


def test_bad_options_are_one_line(ca_dir: Path, tmp_path: Path) -> None:
    for args, text in [
        (["--lifetime", "soon"], "is not a duration"),
        (["--url", "http://ca:1"], "must be https://HOST[:PORT]"),
        (["--acme-allow", "*.internal"], "must be DNS:PATTERN or IP:NETWORK"),
        (["--acme-eab", "kid:c2hvcnQ"], "16 bytes or more"),
        (["--rate-limit", "0"], "--rate-limit must be 1 or more"),
    ]:
        res = run_cli("ca", "serve", "--ca-dir", ca_dir, "--port", str(free_port()), *args)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr and res.stderr.count("\n") == 1, res.stderr
    res = run_cli("ca", "serve", "--ca-dir", tmp_path / "none", "--port", str(free_port()))
    assert res.returncode == 1 and "CA folder not found" in res.stderr


# -- ServerConfig(client_cert="optional") in-process, both TLS engines ------------------------


async def _tls_app(scope: dict[str, object], receive: object, send: object) -> None:
    import json

    assert scope["type"] == "http"
    tls = scope["extensions"]["tls"]  # type: ignore[index]
    body = json.dumps(
        {"chain": len(tls["client_cert_chain"]), "name": tls["client_cert_name"]}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.fixture
def optional_server(
    request: pytest.FixtureRequest, seed_certs_p256: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, Path]]:
    engine, allow = request.param
    monkeypatch.setenv("MTLSKIT_TLS_ENGINE", engine)
    config = ServerConfig(
        certs=seed_certs_p256,
        host="127.0.0.1",
        port=free_port(),
        app=_tls_app,
        client_cert="optional",
        quiet=True,
        allow_cn=("client",) if allow else (),
        watch_interval=0,
    )
    holder, app = prepare(config)
    loop = asyncio.new_event_loop()
    server = Server(config, holder, app=app)
    ready = threading.Event()

    async def main() -> None:
        await server.start()
        ready.set()
        await server.serve(install_signals=False)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield config.port, seed_certs_p256
    loop.call_soon_threadsafe(server.request_stop)
    thread.join(15)
    loop.close()


def _get(port: int, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "optional_server",
    [("openssl", False), ("stdlib", False), ("openssl", True), ("stdlib", True)],
    indirect=True,
    ids=["default", "stdlib", "default-allow", "stdlib-allow"],
)
def test_optional_client_certificate(optional_server: tuple[int, Path]) -> None:
    import json

    port, certs = optional_server
    allow = _get(port, client_context(certs / "ca.crt"))
    with_cert = _get(
        port, client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    )
    assert with_cert[0] == 200
    assert json.loads(with_cert[1]) == {"chain": 1, "name": "CN=client,O=Dev,ST=RB,C=TH"} or (
        json.loads(with_cert[1])["chain"] >= 1
    )
    if allow[0] == 403:  # allow rules: no certificate matches no rule
        assert b"forbidden" in allow[1]
    else:
        assert allow == (200, b'{"chain": 0, "name": null}')
    # a certificate from another CA is still refused in the handshake
    other = init_other_ca(certs.parent / "other")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        _get(port, client_context(certs / "ca.crt", other / "client.crt", other / "client.key"))


def init_other_ca(folder: Path) -> Path:
    if not (folder / "client.crt").exists():
        init_seed(folder)
    return folder


def test_optional_needs_valid_value() -> None:
    from mtlskit.errors import ConfigError

    with pytest.raises(ConfigError):
        ServerConfig(client_cert="maybe")  # type: ignore[arg-type]


def test_error_json_shape(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    service = start_service(procs, ca_dir)
    resp = service.post("/enroll", {"token": "x"})
    assert resp.status == 400 and resp.header("content-type") == "application/json"
    assert error_of(resp) == "malformed request: 'csr' is missing or not a string"
