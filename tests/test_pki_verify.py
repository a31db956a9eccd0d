"""mtlskit verify: valid chains pass, each bad case fails with its reason in plain words."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtlskit.errors import VerificationError
from mtlskit.pki.ca import CA, cert_pem
from mtlskit.pki.verify import (
    METHOD_CRYPTOGRAPHY,
    METHOD_FALLBACK,
    verify_certificate,
    verify_files,
)
from tests.support.processes import run_cli


def verify(*args: str | Path) -> tuple[int, str, str]:
    r = run_cli("verify", *args)
    return r.returncode, r.stdout, r.stderr


def test_mtlskit_init_output_verifies(seed_certs_p256: Path) -> None:
    d = seed_certs_p256
    code, out, err = verify(d / "server.crt", "--ca", d / "ca.crt", "--host", "localhost",
                            "--purpose", "server")  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"{d / 'server.crt'}: OK") and "cryptography" in out
    code, out, err = verify(d / "client.crt", "--ca", d / "ca.crt", "--purpose", "client",
                            "--key", d / "client.key")  # fmt: skip
    assert code == 0, err


@pytest.mark.slow  # the seed's three RSA-4096 keys (session fixture)
@pytest.mark.interop
def test_seed_openssl_output_verifies(seed_certs_openssl: Path) -> None:
    """The seed's openssl commands: a server without keyUsage/EKU and an X.509 v1 client."""
    d = seed_certs_openssl
    code, out, err = verify(d / "server.crt", "--ca", d / "ca.crt", "--host", "www.example.com",
                            "--purpose", "server", "--key", d / "server.key")  # fmt: skip
    assert code == 0, out + err
    assert "cryptography" in out and "no extendedKeyUsage" in out
    code, out, err = verify(d / "client.crt", "--ca", d / "ca.crt", "--purpose", "client",
                            "--key", d / "client.key")  # fmt: skip
    assert code == 0, out + err
    assert "mtlskit chain check" in out and "X.509 v1" in out
    # The fallback still catches a wrong key and a wrong CA.
    code, _, err = verify(d / "client.crt", "--ca", d / "ca.crt", "--key", d / "server.key")
    assert code == 1 and "does not match" in err


def test_v1_ca_without_extensions(tmp_path: Path) -> None:
    """A v1 self-signed CA (openssl x509 -req -signkey) and a v1 leaf it signed."""
    script = """
    set -e
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -subj /CN=Old -out ca.csr
    openssl x509 -req -in ca.csr -signkey ca.key -days 30 -out ca.crt
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key -subj /CN=leaf -out leaf.csr
    openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out leaf.crt
    """
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    assert x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()).version.value == 0
    result = verify_files(tmp_path / "leaf.crt", tmp_path / "ca.crt", purpose="client")
    assert result.ok, result.reasons
    assert result.method == METHOD_FALLBACK
    assert [c.subject.rfc4514_string() for c in result.chain] == ["CN=leaf", "CN=Old"]
    assert run_cli("inspect", tmp_path / "ca.crt").stdout.count("X.509 v1") == 1


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ca") / "certs"
    assert run_cli("init", "--dir", d).returncode == 0
    return d


def _sign_raw(ca: CA, *, start: dt.datetime, end: dt.datetime, path: Path) -> None:
    """A certificate with any validity, made with cryptography directly."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=old")
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.example")]), False)
        .sign(ca.private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path.write_bytes(cert_pem(c))


def test_expired_and_not_yet_valid(ca_dir: Path, tmp_path: Path) -> None:
    ca = CA.load(ca_dir)
    now = dt.datetime.now(dt.UTC)
    _sign_raw(ca, start=dt.datetime(2025, 12, 1, tzinfo=dt.UTC),
              end=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), path=tmp_path / "expired.crt")  # fmt: skip
    code, out, err = verify(tmp_path / "expired.crt", "--ca", ca_dir / "ca.crt")
    assert code == 1
    assert "expired on 2026-01-02 00:00:00 UTC" in err and err.count("\n") == 1
    assert "INVALID" in out
    _sign_raw(ca, start=now + dt.timedelta(days=3), end=now + dt.timedelta(days=30),
              path=tmp_path / "future.crt")  # fmt: skip
    code, _, err = verify(tmp_path / "future.crt", "--ca", ca_dir / "ca.crt")
    assert code == 1 and "not valid before" in err


def test_expired_by_api(ca_dir: Path, tmp_path: Path) -> None:
    ca = CA.load(ca_dir)
    now = dt.datetime.now(dt.UTC)
    _sign_raw(ca, start=now - dt.timedelta(days=10), end=now - dt.timedelta(days=1),
              path=tmp_path / "e.crt")  # fmt: skip
    result = verify_files(tmp_path / "e.crt", ca_dir / "ca.crt")
    assert not result.ok and [p.code for p in result.problems] == ["expired"]
    assert result.method == METHOD_CRYPTOGRAPHY


def test_wrong_ca(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run_cli("ca", "create", "--dir", other, "--subject", "CN=Other CA").returncode == 0
    code, _out, err = verify(ca_dir / "server.crt", "--ca", other / "ca.crt")
    assert code == 1 and err.count("\n") == 1
    assert "was not issued by a CA in" in err
    assert "issuer C=TH, ST=RB, O=IT Sec, CN=CA" in err and "CA is CN=Other CA" in err
    # Same subject, different key: the names match but the signature does not.
    twin = tmp_path / "twin"
    same = "/C=TH/ST=RB/O=IT Sec/CN=CA"
    assert run_cli("ca", "create", "--dir", twin, "--subject", same).returncode == 0
    code, _, err = verify(ca_dir / "server.crt", "--ca", twin / "ca.crt")
    assert code == 1 and "signature does not verify" in err


def test_wrong_purpose(ca_dir: Path) -> None:
    code, _out, err = verify(
        ca_dir / "client.crt", "--ca", ca_dir / "ca.crt", "--purpose", "server"
    )
    assert code == 1
    assert "not allowed for server authentication: its extendedKeyUsage is clientAuth" in err
    assert "mtlskit issue server" in err


def test_wrong_host(ca_dir: Path) -> None:
    code, _out, err = verify(ca_dir / "server.crt", "--ca", ca_dir / "ca.crt", "--host", "evil.com")
    assert code == 1
    assert (
        "evil.com is not among the SANs of" in err
        and "DNS:localhost, DNS:www.example.com, IP:127.0.0.1" in err
    )
    code, *_ = verify(ca_dir / "server.crt", "--ca", ca_dir / "ca.crt", "--host", "WWW.Example.com")
    assert code == 0


def test_wrong_key_and_json(ca_dir: Path) -> None:
    r = run_cli("verify", ca_dir / "server.crt", "--ca", ca_dir / "ca.crt",
                "--key", ca_dir / "client.key", "--json")  # fmt: skip
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["valid"] is False
    assert [x["code"] for x in data["reasons"]] == ["key"]
    assert "does not match certificate" in r.stderr


def test_issuer_that_is_not_a_ca(ca_dir: Path, tmp_path: Path) -> None:
    """A leaf whose 'issuer' is the server certificate (CA:FALSE)."""
    server = x509.load_pem_x509_certificate((ca_dir / "server.crt").read_bytes())
    server_key = serialization.load_pem_private_key((ca_dir / "server.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=sneaky"))
        .issuer_name(server.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(server_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "sneaky.crt").write_bytes(cert_pem(leaf) + cert_pem(server))
    code, _, err = verify(tmp_path / "sneaky.crt", "--ca", ca_dir / "ca.crt")
    assert code == 1 and "is not a CA" in err
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", ca_dir / "ca.crt", "-untrusted", tmp_path / "sneaky.crt",
         tmp_path / "sneaky.crt"], capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0  # openssl agrees


def test_chain_option_and_api(tmp_path: Path) -> None:
    """--chain supplies the intermediate when the leaf file holds the leaf alone."""
    root = CA.create("CN=Root", path_length=1)
    inter = CA.create("CN=Inter", parent=root)
    leaf = inter.issue("server", "CN=svc", sans=["svc.example", "*.svc.example"])
    (tmp_path / "root.crt").write_bytes(cert_pem(root.certificate))
    (tmp_path / "inter.crt").write_bytes(cert_pem(inter.certificate))
    (tmp_path / "leaf.crt").write_bytes(cert_pem(leaf.certificate))
    code, _, err = verify(tmp_path / "leaf.crt", "--ca", tmp_path / "root.crt")
    assert code == 1 and "was not issued by a CA in" in err and "issuer CN=Inter" in err
    code, out, err = verify(tmp_path / "leaf.crt", "--ca", tmp_path / "root.crt",
                            "--chain", tmp_path / "inter.crt", "--host", "a.svc.example")  # fmt: skip
    assert code == 0, err
    assert "CN=svc  <-  CN=Inter  <-  CN=Root" in out
    code, _, err = verify(tmp_path / "leaf.crt", "--ca", tmp_path / "root.crt",
                          "--chain", tmp_path / "inter.crt", "--host", "a.b.svc.example")  # fmt: skip
    assert code == 1 and "a.b.svc.example is not among the SANs" in err

    # The API: a result with reasons, and VerificationError for the CLI.
    later = leaf.certificate.not_valid_after_utc + dt.timedelta(days=1)
    result = verify_certificate(
        leaf.certificate, [root.certificate], intermediates=[inter.certificate], at=later
    )
    assert not result.ok and {p.code for p in result.problems} == {"expired"}
    with pytest.raises(VerificationError) as info:
        result.raise_for_problems()
    assert info.value.reasons == result.reasons and "expired on" in info.value.what
    ok = verify_certificate(
        leaf.certificate, [root.certificate], intermediates=[inter.certificate],
        host="svc.example", purpose="server", key=leaf.private_key,
    )  # fmt: skip
    assert ok.ok and ok.method == METHOD_CRYPTOGRAPHY and len(ok.chain) == 3
    ok.raise_for_problems()  # no-op
