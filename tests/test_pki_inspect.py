"""mtlskit inspect: what openssl -text shows, for every kind of file, PEM and DER."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mtlskit.pki.ca import CA
from mtlskit.pki.inspect import describe
from tests.support.processes import run_cli


def test_certificate_text_matches_openssl(seed_certs_p256: Path) -> None:
    path = seed_certs_p256 / "server.crt"
    r = run_cli("inspect", path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    c = x509.load_pem_x509_certificate(path.read_bytes())
    ossl = subprocess.run(
        ["openssl", "x509", "-in", path, "-noout", "-text", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in (
        "Version: 3 (0x2)",
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: C=TH, ST=RB, O=IT Sec, CN=CA",
        "Subject: C=TH, ST=RB, O=Dev, CN=localhost",
        "Subject Public Key: ECDSA P-256",
        "Basic Constraints (critical): CA:FALSE",
        "Key Usage (critical): Digital Signature",
        "Extended Key Usage: TLS Web Server Authentication (serverAuth)",
        "Subject Alternative Name: DNS:localhost, DNS:www.example.com, IP:127.0.0.1",
        "Subject Key Identifier: ",
        "Authority Key Identifier: keyid:",
    ):
        assert line in out, line
    # Same serial, SKI and fingerprint as openssl prints.
    serial = format(c.serial_number, "x")
    assert serial in out.replace(":", "")
    ossl_fp = next(x for x in ossl.splitlines() if "Fingerprint=" in x).split("=", 1)[1]
    assert f"SHA-256 Fingerprint: {ossl_fp}" in out
    ski = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert ski.hex(":").upper() in ossl and ski.hex(":").upper() in out
    assert c.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S") in out


def test_csr_key_and_json(seed_certs_p256: Path) -> None:
    d = seed_certs_p256
    r = run_cli("inspect", d / "server.csr", d / "server.key", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [i["kind"] for i in data] == ["csr", "private-key"]
    assert data[0]["signature_valid"] is True
    assert data[0]["subject"] == "C=TH, ST=RB, O=Dev, CN=localhost"
    san = next(e for e in data[0]["extensions"] if e["name"] == "Subject Alternative Name")
    assert "DNS:www.example.com" in san["value"]
    assert data[1] == {
        "kind": "private-key",
        "source": str(d / "server.key"),
        "type": "ECDSA P-256",
        "encrypted": False,
    }
    # the secret never appears
    r = run_cli("inspect", d / "server.key")
    assert "Type: ECDSA P-256 (not encrypted)" in r.stdout
    secret = d.joinpath("server.key").read_text().splitlines()[1]
    assert secret not in r.stdout


@pytest.mark.slow  # the seed's three RSA-4096 keys (session fixture)
@pytest.mark.interop
def test_seed_openssl_files(seed_certs_openssl: Path) -> None:
    d = seed_certs_openssl
    r = run_cli(
        "inspect", d / "ca.crt", d / "client.crt", d / "server.csr", d / "client.key", "--json"
    )
    assert r.returncode == 0, r.stderr
    ca, client, csr, key = json.loads(r.stdout)
    assert ca["subject"] == "C=TH, ST=RB, O=IT Sec, CN=CA" and ca["public_key"] == "RSA 4096"
    assert client["version"] == 1 and client["extensions"] == []
    assert csr["signature_valid"] is True
    assert key["type"] == "RSA 4096"


def test_der_bundle_and_crl(seed_certs_p256: Path, tmp_path: Path) -> None:
    d = seed_certs_p256
    der = tmp_path / "ca.der"
    subprocess.run(
        ["openssl", "x509", "-in", d / "ca.crt", "-outform", "DER", "-out", der], check=True
    )
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((d / "server.crt").read_bytes() + (d / "ca.crt").read_bytes())
    ca = CA.load(d)
    now = dt.datetime.now(dt.UTC)
    server = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(server.serial_number)
            .revocation_date(now)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
            .build()
        )
        .add_extension(x509.CRLNumber(7), False)
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crl_der = tmp_path / "ca.crl"
    crl_der.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    r = run_cli("inspect", der, bundle, crl_der)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Certificate:") == 3
    assert "Certificate Revocation List:" in r.stdout
    assert "CRL Number: 7" in r.stdout
    assert "keyCompromise" in r.stdout
    ossl = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", crl_der, "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert format(server.serial_number, "X") in ossl.replace(":", "")


def test_encrypted_key_needs_password(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    assert run_cli("ca", "create", "--dir", tmp_path, "--passphrase-file", pw).returncode == 0
    r = run_cli("inspect", tmp_path / "ca.key")
    assert r.returncode == 0 and "encrypted" in r.stdout
    r = run_cli("inspect", tmp_path / "ca.key", "--password-file", pw)
    assert "Type: ECDSA P-256 (encrypted)" in r.stdout


def test_bad_csr_signature_fails_like_openssl_req_verify(
    seed_certs_p256: Path, tmp_path: Path
) -> None:
    der = x509.load_pem_x509_csr((seed_certs_p256 / "client.csr").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    broken = der[:-3] + bytes([der[-3] ^ 0x01]) + der[-2:]  # flip a bit in the signature
    (tmp_path / "bad.csr").write_bytes(broken)
    ossl = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-in", tmp_path / "bad.csr", "-noout", "-verify"],
        capture_output=True,
        text=True,
    )
    # OpenSSL 3.0 reports the failure on stderr (its exit code stays 0).
    assert "verify failure" in ossl.stderr
    r = run_cli("inspect", tmp_path / "bad.csr")
    assert r.returncode == 1
    assert "verify FAILED" in r.stdout
    assert r.stderr.startswith("error: the CSR's signature does not verify")


@pytest.mark.parametrize("content", [b"hello world\n", b"\x00\x01\x02", b""])
def test_not_pem_or_der(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "junk.crt"
    p.write_bytes(content)
    r = run_cli("inspect", p)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert str(p) in r.stderr


def test_describe_api(seed_certs_p256: Path) -> None:
    (item,) = describe(seed_certs_p256 / "ca.crt")
    assert item.kind == "certificate"
    assert item.fields["self_signed"] is True
    bc = next(e for e in item.fields["extensions"] if e["name"] == "Basic Constraints")
    assert bc == {"name": "Basic Constraints", "oid": "2.5.29.19", "critical": True,
                  "value": "CA:TRUE"}  # fmt: skip
