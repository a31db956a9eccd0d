"""mtlskit export p12: read back by openssl pkcs12 (OpenSSL 3) with and without a password."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import run_cli

pytestmark = pytest.mark.interop  # real openssl reads what we write


@pytest.fixture
def certs(seed_certs_p256: Path, tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    shutil.copytree(seed_certs_p256, d)
    return d


def pkcs12_info(path: Path, passin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", path, "-passin", passin, "-noenc"],
        capture_output=True,
        text=True,
    )


def test_with_password(certs: Path) -> None:
    (certs / "pw").write_text("correct horse\n")
    r = run_cli(
        "export", "p12", "--cert", certs / "client.crt", "--key", certs / "client.key",
        "--ca", certs / "ca.crt", "--password-file", certs / "pw",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = certs / "client.p12"
    assert out.stat().st_mode & 0o777 == 0o600
    info = pkcs12_info(out, f"file:{certs / 'pw'}")
    assert info.returncode == 0, info.stderr
    assert info.stdout.count("-----BEGIN CERTIFICATE-----") == 2
    assert "-----BEGIN PRIVATE KEY-----" in info.stdout
    assert "friendlyName: client" in info.stdout
    assert "AES-256-CBC" in info.stderr + info.stdout
    assert pkcs12_info(out, "pass:wrong").returncode != 0
    # Our inspect reads it back with the password, and explains without it.
    r = run_cli("inspect", out, "--password-file", certs / "pw")
    assert r.returncode == 0 and "PKCS#12:" in r.stdout and "CN=client" in r.stdout
    r = run_cli("inspect", out)
    assert r.returncode == 1 and "--password-file" in r.stderr
    (certs / "bad").write_text("nope\n")
    r = run_cli("inspect", out, "--password-file", certs / "bad")
    assert r.returncode == 1 and "wrong password" in r.stderr


def test_without_password(certs: Path) -> None:
    out = certs / "server-nopw.p12"
    r = run_cli(
        "export", "p12", "--cert", certs / "server.crt", "--key", certs / "server.key",
        "--no-password", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = pkcs12_info(out, "pass:")  # OpenSSL 3 needs -passin pass: for an empty password
    assert info.returncode == 0, info.stderr
    assert "friendlyName: localhost" in info.stdout
    assert "-----BEGIN CERTIFICATE-----" in info.stdout
    r = run_cli("inspect", out, "--json")
    assert r.returncode == 0 and '"password": false' in r.stdout


def test_refuses_to_overwrite_and_wrong_key(certs: Path) -> None:
    args = ["export", "p12", "--cert", certs / "server.crt", "--no-password"]
    r = run_cli(*args, "--key", certs / "client.key")
    assert r.returncode == 1 and "does not match" in r.stderr and r.stderr.count("\n") == 1
    assert not (certs / "server.p12").exists()
    assert run_cli(*args, "--key", certs / "server.key").returncode == 0
    r = run_cli(*args, "--key", certs / "server.key")
    assert r.returncode == 1 and "file exists" in r.stderr


def test_needs_a_password_choice(certs: Path) -> None:
    r = run_cli("export", "p12", "--cert", certs / "server.crt", "--key", certs / "server.key")
    assert r.returncode == 2 and "--no-password" in r.stderr
    assert not (certs / "server.p12").exists()
