"""One-time enrollment: `mtlskit ca token` + `mtlskit enroll`, and every refusal
(nothing issued, the token still usable where the request was the problem)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtlskit.caclient import request
from mtlskit.pki.inventory import Inventory
from mtlskit.pki.seed import init_seed
from mtlskit.service.state import open_service_database
from mtlskit.service.tokens import create_token
from tests.support.processes import run_cli
from tests.support.service import Service, error_of, start_service


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    init_seed(folder)
    return folder


@pytest.fixture
def service(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> Service:
    return start_service(procs, ca_dir, "--rate-limit", "1000")


def token(ca_dir: Path, name: str, *args: str) -> str:
    res = run_cli("ca", "token", name, "--ca-dir", ca_dir, *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def issued_count(ca_dir: Path) -> int:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    return Inventory.open(ca_dir, ca_cert).count()


def csr_pem(
    subject: str | None = None,
    sans: list[x509.GeneralName] | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enroll_raw(service: Service, tok: str, csr: str) -> tuple[int, dict[str, object]]:
    resp = service.post("/enroll", {"token": tok, "csr": csr})
    return resp.status, json.loads(resp.body)


def test_enroll_cli_client_and_server(service: Service, ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "node"
    fp = service.fingerprint()
    client_token = token(ca_dir, "alice")
    assert len(client_token) >= 43  # 256 random bits, base64url
    # never trust on first use: no ca.crt and no fingerprint is refused, token unused
    res = run_cli("enroll", service.url, "--token", client_token, "--dir", out)
    assert res.returncode == 2 and "no " in res.stderr and "--fingerprint" in res.stderr
    res = run_cli("enroll", service.url, "--token", client_token, "--dir", out, "--fingerprint", fp)
    assert res.returncode == 0, res.stderr
    assert (out / "client.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.rfc4514_string() == "CN=alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(hours=23) < life <= dt.timedelta(hours=24, minutes=2)
    assert (out / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    # the database keeps only the hash
    db = (ca_dir / "ca.db").read_bytes()
    assert client_token.encode() not in db

    # reused: refused, nothing issued, files untouched
    before = issued_count(ca_dir)
    res = run_cli("enroll", service.url, "--token", client_token, "--dir", out, "--name", "x")
    assert res.returncode == 1 and "already used" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert issued_count(ca_dir) == before and not (out / "x.key").exists()

    # a server token: server.crt/server.key in the seed layout, ca.crt already there
    server_token = token(
        ca_dir, "web", "--profile", "server", "--san", "localhost", "--san", "127.0.0.1"
    )
    res = run_cli("enroll", service.url, "--token", server_token, "--dir", out)
    assert res.returncode == 0, res.stderr
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    # existing files: refused before the token is spent
    again = token(ca_dir, "web", "--profile", "server")
    res = run_cli("enroll", service.url, "--token", again, "--dir", out)
    assert res.returncode == 1 and "file exists; the token was not used" in res.stderr
    res = run_cli("enroll", service.url, "--token", again, "--dir", out, "--name", "web2")
    assert res.returncode == 0, res.stderr
    assert "issue route=enroll" in service.log()


def test_enroll_refusals(service: Service, ca_dir: Path) -> None:
    before = issued_count(ca_dir)
    tok = token(ca_dir, "app", "--profile", "server", "--san", "app.internal")

    # unknown token
    status, body = enroll_raw(service, "A" * 43, csr_pem())
    assert status == 403 and "unknown token" in str(body["error"])
    # other names: SAN or subject beyond the token
    status, body = enroll_raw(service, tok, csr_pem(sans=[x509.DNSName("evil.internal")]))
    assert status == 403 and "evil.internal" in str(body["error"])
    status, body = enroll_raw(service, tok, csr_pem(subject="root"))
    assert status == 403 and "CN=root" in str(body["error"])
    # a CSR asking to be a CA
    ca_ext = [(x509.BasicConstraints(ca=True, path_length=None), True)]
    status, body = enroll_raw(service, tok, csr_pem(extensions=ca_ext))
    assert status == 403 and "CA:TRUE" in str(body["error"])
    # a bad signature
    good = x509.load_pem_x509_csr(csr_pem().encode()).public_bytes(serialization.Encoding.DER)
    broken = good[:-3] + bytes([good[-3] ^ 0xFF]) + good[-2:]
    bad_sig = x509.load_der_x509_csr(broken).public_bytes(serialization.Encoding.PEM).decode()
    status, body = enroll_raw(service, tok, bad_sig)
    assert status == 400 and "signature" in str(body["error"])
    # a weak key
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    status, body = enroll_raw(service, tok, csr_pem(key=weak))
    assert status == 400 and "1024 bits" in str(body["error"])
    # malformed CSR, malformed JSON, missing field
    status, body = enroll_raw(service, tok, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert status == 400 and "malformed CSR" in str(body["error"])
    resp = request(service.url, "/enroll", service.context(), method="POST", body=["x"])
    assert resp.status == 400 and "JSON object" in error_of(resp)
    resp = service.post("/enroll", {"token": tok})
    assert resp.status == 400 and "'csr' is missing" in error_of(resp)
    assert issued_count(ca_dir) == before  # nothing issued by any of these

    # the token is still good: extensions it asks for are ignored, the profile decides
    asked = [
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
        (
            x509.KeyUsage(True, True, True, True, True, True, True, False, False),
            True,
        ),
    ]
    status, body = enroll_raw(service, tok, csr_pem(extensions=asked))
    assert status == 201, body
    cert = x509.load_pem_x509_certificate(str(body["certificate"]).encode())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert issued_count(ca_dir) == before + 1

    # expired (made in the past, through the same database)
    db = open_service_database(ca_dir)
    try:
        old, _ = create_token(
            db,
            "late",
            ttl=dt.timedelta(minutes=1),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        )
    finally:
        db.close()
    status, body = enroll_raw(service, old, csr_pem())
    assert status == 403 and "expired" in str(body["error"])
    assert "Traceback" not in service.log()


def test_token_spent_once_under_race(service: Service, ca_dir: Path) -> None:
    tok = token(ca_dir, "racer")
    csrs = [csr_pem() for _ in range(8)]
    results: list[int] = []
    start = threading.Barrier(len(csrs))

    def one(csr: str) -> None:
        start.wait()
        results.append(enroll_raw(service, tok, csr)[0])

    threads = [threading.Thread(target=one, args=(c,)) for c in csrs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [201] + [403] * 7


def test_lost_answer_is_fetched_again(service: Service, ca_dir: Path) -> None:
    """A token is spent in the transaction that records its certificate. When the answer
    is lost (the connection or the replica died after the commit), the same request
    again gets the same certificate; a request with another key is refused."""
    tok = token(ca_dir, "again", "--profile", "server", "--san", "again.internal")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(key=key)
    before = issued_count(ca_dir)
    status, first = enroll_raw(service, tok, csr)
    assert status == 201, first
    status, again = enroll_raw(service, tok, csr_pem(key=key))  # a new CSR, the same key
    assert status == 201, again
    assert again["serial"] == first["serial"] and again["certificate"] == first["certificate"]
    assert issued_count(ca_dir) == before + 1  # answered again, not issued again
    status, other = enroll_raw(service, tok, csr_pem())
    assert status == 403 and "already used" in str(other["error"])
    # The token names its certificate.
    db = open_service_database(ca_dir)
    try:
        with db.transaction() as tx:
            row = tx.one("SELECT used_at, serial FROM tokens WHERE name = 'again'")
    finally:
        db.close()
    assert row is not None and row["used_at"] and row["serial"] == first["serial"]
    # /enroll/info no longer offers a spent token.
    resp = service.post("/enroll/info", {"token": tok})
    assert resp.status == 403 and "already used" in error_of(resp)


def test_token_command_refusals(ca_dir: Path, tmp_path: Path) -> None:
    res = run_cli("ca", "token", "x", "--ca-dir", ca_dir, "--ttl", "forever")
    assert res.returncode == 2 and "not a duration" in res.stderr
    res = run_cli("ca", "token", "x", "--ca-dir", ca_dir, "--san", "bad name!")
    assert res.returncode == 2 and "invalid DNS name" in res.stderr
    res = run_cli("ca", "token", "x", "--ca-dir", tmp_path / "nothing")
    assert res.returncode == 1 and "not found" in res.stderr


def test_rate_limit_per_address_and_token(
    ca_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    service = start_service(procs, ca_dir, "--rate-limit", "3")
    tok = token(ca_dir, "busy")
    statuses = []
    for _ in range(4):
        resp = service.post("/enroll/info", {"token": tok})
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429]
    assert 1 <= int(resp.header("retry-after")) <= 60
    assert "too many requests" in error_of(resp)
    # anonymous GETs are not limited; the service keeps serving
    assert service.get("/healthz").status == 200


@pytest.mark.slow
def test_enrollment_rate_figure(service: Service, ca_dir: Path) -> None:
    """Not a benchmark: a figure for the report (sequential enrollments over HTTPS)."""
    tokens = [token(ca_dir, f"n{i}") for i in range(3)]
    db = open_service_database(ca_dir)
    try:
        tokens += [create_token(db, f"m{i}")[0] for i in range(40)]
    finally:
        db.close()
    csrs = [csr_pem() for _ in tokens]
    ctx = service.context()
    t0 = time.perf_counter()
    for tok, csr in zip(tokens, csrs, strict=True):
        resp = request(service.url, "/enroll", ctx, method="POST", body={"token": tok, "csr": csr})
        assert resp.status == 201
    elapsed = time.perf_counter() - t0
    print(f"\n{len(tokens)} enrollments in {elapsed:.2f}s: {len(tokens) / elapsed:.0f}/s (SQLite)")
