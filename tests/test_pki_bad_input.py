"""Bad input: one line `error: … (file): next step`, exit 2 usage / 1 failure, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.processes import Result, run_cli


@pytest.fixture
def certs(seed_certs_p256: Path, tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    shutil.copytree(seed_certs_p256, d)
    return d


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line(r: Result, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("error: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def test_missing_file(certs: Path) -> None:
    before = snapshot(certs)
    for args in (
        ["inspect", certs / "nope.crt"],
        ["verify", certs / "nope.crt", "--ca", certs / "ca.crt"],
        ["sign", certs / "nope.csr", "--ca-dir", certs, "--profile", "server"],
        ["export", "p12", "--cert", certs / "nope.crt", "--key", certs / "server.key",
         "--no-password"],
    ):  # fmt: skip
        assert_one_line(run_cli(*args), 1, "not found", "nope.")
    assert snapshot(certs) == before


def test_not_pem_or_der(certs: Path) -> None:
    junk = certs / "junk.csr"
    junk.write_text("this is not a certificate\n")
    before = snapshot(certs)
    assert_one_line(
        run_cli("sign", junk, "--ca-dir", certs, "--profile", "client"), 1, "not a PEM or DER"
    )
    assert_one_line(run_cli("verify", junk, "--ca", certs / "ca.crt"), 1, "not a PEM or DER")
    assert snapshot(certs) == before


def test_certificate_where_a_key_or_csr_is_expected(certs: Path) -> None:
    before = snapshot(certs)
    assert_one_line(
        run_cli("sign", certs / "server.crt", "--ca-dir", certs, "--profile", "server"),
        1,
        "expected a certificate request (CSR), found a certificate",
        "server.crt",
    )
    assert_one_line(
        run_cli(
            "export", "p12", "--cert", certs / "server.crt", "--key", certs / "server.crt",
            "--no-password",
        ),
        1,
        "expected a private key, found a certificate",
    )  # fmt: skip
    assert_one_line(
        run_cli("csr", "create", "--key", certs / "client.crt", "--out", certs / "x.csr",
                "--subject", "CN=x"),
        1,
        "expected a private key",
    )  # fmt: skip
    assert snapshot(certs) == before


def test_key_does_not_match_certificate(certs: Path) -> None:
    before = snapshot(certs)
    assert_one_line(
        run_cli("verify", certs / "server.crt", "--ca", certs / "ca.crt",
                "--key", certs / "client.key"),
        1,
        "does not match certificate",
    )  # fmt: skip
    # a CA folder whose key is not its certificate's
    shutil.copy(certs / "server.key", certs / "ca.key")
    assert_one_line(
        run_cli("issue", "client", "eve", "--ca-dir", certs), 1, "ca.key does not match ca.crt"
    )
    assert not (certs / "eve.key").exists()
    del before[str(certs / "ca.key")]
    after = snapshot(certs)
    del after[str(certs / "ca.key")]
    assert after == before


def test_wrong_passphrase(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("right\n")
    (tmp_path / "bad").write_text("wrong\n")
    ca = tmp_path / "ca"
    assert (
        run_cli("ca", "create", "--dir", ca, "--passphrase-file", tmp_path / "pw").returncode == 0
    )
    before = snapshot(tmp_path)
    assert_one_line(
        run_cli("issue", "server", "web", "--ca-dir", ca, "--ca-passphrase-file", tmp_path / "bad"),
        1,
        "wrong passphrase",
        "ca.key",
    )
    assert_one_line(
        run_cli("ca", "create", "--dir", tmp_path / "sub", "--parent-dir", ca,
                "--ca-passphrase-file", tmp_path / "bad"),
        1,
        "wrong passphrase",
    )  # fmt: skip
    assert snapshot(tmp_path) == before


def test_unknown_key_type(tmp_path: Path) -> None:
    for args in (
        ["ca", "create", "--dir", tmp_path / "ca", "--key-type", "dsa1024"],
        ["csr", "create", "x", "--dir", tmp_path / "ca", "--key-type", "rsa1024"],
    ):
        assert_one_line(run_cli(*args), 2, "dsa1024" if "dsa1024" in args else "rsa1024")
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(
    "san", ["bad name!", "IP:999.1.1.1", "-lead.example", "email:nobody", "URI:nota uri"]
)
def test_invalid_san(certs: Path, san: str) -> None:
    before = snapshot(certs)
    assert_one_line(
        run_cli("issue", "server", "web", "--ca-dir", certs, "--san", san), 2, "invalid"
    )
    assert snapshot(certs) == before


def test_invalid_subject_and_days(certs: Path) -> None:
    before = snapshot(certs)
    assert_one_line(
        run_cli("issue", "client", "c", "--ca-dir", certs, "--subject", "/C=Thailand/CN=c"),
        2,
        "country must be 2 letters",
    )
    assert_one_line(
        run_cli("issue", "client", "c", "--ca-dir", certs, "--days", "5",
                "--not-after", "2030-01-01"),
        2,
        "either --days or --not-after",
    )  # fmt: skip
    assert_one_line(run_cli("issue", "client", "c", "--ca-dir", certs, "--days", "0"), 2)
    assert snapshot(certs) == before


def test_ca_certificate_without_ca_true(certs: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    shutil.copy(certs / "server.crt", fake / "ca.crt")
    shutil.copy(certs / "server.key", fake / "ca.key")
    before = snapshot(tmp_path)
    assert_one_line(
        run_cli("sign", certs / "client.csr", "--ca-dir", fake, "--profile", "client",
                "-o", tmp_path / "out.crt"),
        1,
        "not a CA",
        "basicConstraints CA:TRUE",
    )  # fmt: skip
    assert_one_line(
        run_cli("ca", "create", "--dir", tmp_path / "sub", "--parent-dir", fake), 1, "not a CA"
    )
    assert snapshot(tmp_path) == before


def test_ca_folder_without_key(certs: Path, tmp_path: Path) -> None:
    only_cert = tmp_path / "public"
    only_cert.mkdir()
    shutil.copy(certs / "ca.crt", only_cert / "ca.crt")
    before = snapshot(tmp_path)
    assert_one_line(
        run_cli("issue", "client", "x", "--ca-dir", only_cert), 1, "no ca.key", "--ca-dir"
    )
    assert_one_line(
        run_cli("issue", "client", "x", "--ca-dir", tmp_path / "absent"), 1, "CA folder not found"
    )
    assert snapshot(tmp_path) == before


def test_usage_errors(certs: Path) -> None:
    assert_one_line(run_cli("sign", certs / "server.csr", "--ca-dir", certs), 2, "--profile")
    assert_one_line(run_cli("verify", certs / "server.crt", "--purpose", "email"), 2)
    assert_one_line(run_cli("csr", "create"), 2, "give NAME")
