"""`mtlskit init`: the seed's file set, done right, checked by real openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.processes import run_cli

FILES = [
    "ca.key",
    "ca.crt",
    "server.key",
    "server.csr",
    "server.crt",
    "client.key",
    "client.csr",
    "client.crt",
]


def test_init_writes_seed_layout_with_safe_modes(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    r = run_cli("init", "--dir", out)
    assert r.returncode == 0, r.stderr
    for name in FILES:
        mode = (out / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    assert "mtlskit serve" in r.stdout
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", out / "ca.crt", out / "server.crt", out / "client.crt"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    client = x509.load_pem_x509_certificate((out / "client.crt").read_bytes())
    assert server.subject.rfc4514_string() == "CN=localhost,O=Dev,ST=RB,C=TH"
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in san.get_values_for_type(x509.DNSName)] == [
        "localhost",
        "www.example.com",
    ]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == "CN=client,O=Dev,ST=RB,C=TH"


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert run_cli("init", "--dir", out).returncode == 0
    before = (out / "ca.crt").read_bytes()
    r = run_cli("init", "--dir", out)
    assert r.returncode == 1
    assert r.stderr.startswith("error: file exists") and r.stderr.count("\n") == 1
    assert "--force" in r.stderr
    assert (out / "ca.crt").read_bytes() == before
    assert run_cli("init", "--dir", out, "--force").returncode == 0
    assert (out / "ca.crt").read_bytes() != before


@pytest.mark.parametrize("key_type", ["rsa2048", "p384", "ed25519"])
def test_init_key_types(tmp_path: Path, key_type: str) -> None:
    out = tmp_path / "certs"
    assert run_cli("init", "--dir", out, "--key-type", key_type).returncode == 0
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", out / "ca.crt", out / "server.crt"], capture_output=True
    )
    assert ok.returncode == 0


def test_unknown_key_type_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli("init", "--dir", tmp_path / "c", "--key-type", "dsa")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "c").exists()
