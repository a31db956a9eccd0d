"""`mtlskit verify --crl`: a revoked certificate is refused, in plain words, as openssl does."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import run_cli


def _pki(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    assert run_cli("init", "--dir", certs).returncode == 0
    r = run_cli("issue", "client", "alice", "--ca-dir", certs, "--dir", certs)
    assert r.returncode == 0, r.stderr
    r = run_cli("revoke", certs / "alice.crt", "--ca-dir", certs, "--reason", "keyCompromise")
    assert r.returncode == 0, r.stderr
    r = run_cli("crl", "--ca-dir", certs)
    assert r.returncode == 0, r.stderr
    assert (certs / "ca.crl").exists()
    return certs


def _openssl_crl_check(certs: Path, name: str) -> int:
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            certs / "ca.crt",
            "-CRLfile",
            certs / "ca.crl",
            certs / name,
        ],
        capture_output=True,
    ).returncode


def test_verify_crl_refuses_revoked_and_accepts_others(tmp_path: Path) -> None:
    certs = _pki(tmp_path)
    bad = run_cli(
        "verify", certs / "alice.crt", "--ca", certs / "ca.crt", "--crl", certs / "ca.crl"
    )
    assert bad.returncode == 1
    assert "was revoked on" in bad.stdout and "(reason: keyCompromise)" in bad.stdout
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert _openssl_crl_check(certs, "alice.crt") != 0

    good = run_cli(
        "verify", certs / "client.crt", "--ca", certs / "ca.crt", "--crl", certs / "ca.crl"
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "not revoked" in good.stdout
    assert _openssl_crl_check(certs, "client.crt") == 0


def test_verify_crl_of_another_ca_is_a_problem(tmp_path: Path) -> None:
    certs = _pki(tmp_path)
    other = tmp_path / "other"
    assert run_cli("init", "--dir", other).returncode == 0
    assert run_cli("crl", "--ca-dir", other).returncode == 0
    r = run_cli("verify", certs / "client.crt", "--ca", certs / "ca.crt", "--crl", other / "ca.crl")
    assert r.returncode == 1
    assert "CRL" in r.stdout


def test_verify_crl_that_is_not_a_crl_is_one_line(tmp_path: Path) -> None:
    certs = _pki(tmp_path)
    r = run_cli("verify", certs / "client.crt", "--ca", certs / "ca.crt", "--crl", certs / "ca.crt")
    assert r.returncode == 1
    assert r.stderr.startswith("error: expected a CRL") and r.stderr.count("\n") == 1
