"""Issue 11, offline: nothing accepted silently, every wrong file named the same way in
every command, CAs of one name told apart, hints that paste. Real files, the CLI as a
process, openssl as the peer that judges."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.pki.seed import init_seed
from tests.support.processes import run_cli


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    return folder


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr and "Warning" not in stderr
    return stderr.rstrip("\n")


def crt(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


# -- nothing silent --------------------------------------------------------------------------


def test_a_lifetime_past_the_cas_end_is_refused(certs: Path, tmp_path: Path) -> None:
    ca_end = crt(certs / "ca.crt").not_valid_after_utc
    r = run_cli("issue", "client", "long", "--ca-dir", certs, "--days", "5000")
    line = one_line(r.stderr)
    assert r.returncode == 2
    assert (
        f"--days 5000 would end on {(dt.datetime.now(dt.UTC) + dt.timedelta(5000)):%Y-%m-%d}"
        in line
    )
    assert f"after the CA's end ({ca_end:%Y-%m-%d %H:%M} UTC)" in line
    assert f"({certs / 'ca.crt'})" in line and "--not-after " + f"{ca_end:%Y-%m-%d}" in line
    assert not list(certs.glob("long.*"))  # nothing half-written
    r = run_cli("issue", "client", "long", "--ca-dir", certs, "--not-after", "2099-01-01")
    assert r.returncode == 2 and "--not-after 2099-01-01 would end on 2099-01-01" in r.stderr
    # sign and an intermediate's lifetime are checked the same way
    assert run_cli("csr", "create", "web", "--dir", tmp_path).returncode == 0
    r = run_cli("sign", tmp_path / "web.csr", "--ca-dir", certs, "--profile", "server",
                "--days", "4000")  # fmt: skip
    assert r.returncode == 2 and "--days 4000 would end" in r.stderr
    assert not (tmp_path / "web.crt").exists()
    r = run_cli("ca", "create", "--dir", tmp_path / "sub", "--parent-dir", certs, "--days", "9999")
    assert r.returncode == 2 and "--days 9999 would end" in r.stderr
    # within the CA's life: as asked, to the second
    r = run_cli("issue", "client", "ok", "--ca-dir", certs, "--days", "3000")
    assert r.returncode == 0, r.stderr
    c = crt(certs / "ok.crt")
    assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=3000, minutes=1)


@pytest.mark.slow  # three renewals, each a process
def test_renew_keeps_the_exact_lifetime_and_supersedes(certs: Path) -> None:
    assert run_cli("issue", "client", "soon", "--ca-dir", certs, "--days", "5").returncode == 0
    first = crt(certs / "soon.crt")
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    serials = [format(first.serial_number, "x")]
    for _ in range(3):
        r = run_cli("renew", certs / "soon.crt", "--ca-dir", certs, "--force")
        assert r.returncode == 0, r.stderr
        c = crt(certs / "soon.crt")
        assert c.not_valid_after_utc - c.not_valid_before_utc == lifetime  # not + 1 min each
        serials.append(format(c.serial_number, "x"))
    rows = {row["serial"]: row for row in json.loads(
        run_cli("list", "--ca-dir", certs, "--json").stdout)}  # fmt: skip
    assert [rows[s]["status"] for s in serials] == ["superseded"] * 3 + ["valid"]
    assert all(rows[s]["reason"] == "superseded" for s in serials[:3])
    expiring = json.loads(run_cli("list", "--ca-dir", certs, "--expiring", "30d", "--json").stdout)
    assert [row["serial"] for row in expiring] == [serials[-1]]  # the renewed-away ones left
    table = run_cli("list", "--ca-dir", certs).stdout
    assert table.count("superseded") == 3
    # superseded is a mark, not a revocation: no CRL lists them, openssl still accepts one
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    crl = x509.load_pem_x509_crl((certs / "ca.crl").read_bytes())
    assert len(crl) == 0


def test_subject_without_equals_and_duration_without_unit_are_usage_errors(certs: Path) -> None:
    r = run_cli("issue", "client", "x", "--ca-dir", certs, "--subject", "CN")
    assert r.returncode == 2
    assert one_line(r.stderr) == (
        "error: subject 'CN' has no '=': a subject is a list of NAME=VALUE: "
        "e.g. --subject CN=CN or '/O=Dev/CN=CN'"
    )
    assert not list(certs.glob("x.*"))
    r = run_cli("list", "--ca-dir", certs, "--expiring", "30")
    assert r.returncode == 2
    assert one_line(r.stderr) == (
        "error: --expiring '30' has no unit: write e.g. 30d for days (units: s, m, h, d, w)"
    )
    r = run_cli("status", certs, "--warn", "12")
    assert r.returncode == 2 and "--warn '12' has no unit" in r.stderr
    assert run_cli("list", "--ca-dir", certs, "--expiring", "1w2d").returncode == 0


def test_verify_says_when_the_ca_file_is_no_ca(certs: Path) -> None:
    r = run_cli("verify", certs / "client.crt", "--ca", certs / "server.crt")
    assert r.returncode == 1
    assert (
        f"  - {certs / 'server.crt'} holds no CA certificate (C=TH, ST=RB, O=Dev, CN=localhost: "
        "no basicConstraints CA:TRUE)"
    ) in r.stdout
    assert "pass the CA's certificate with --ca" in one_line(r.stderr)


def test_verify_refuses_a_leaf_trusted_only_by_itself(certs: Path, tmp_path: Path) -> None:
    client = certs / "client.crt"
    r = run_cli("verify", client, "--ca", client)
    assert r.returncode == 1
    assert "is trusted only because" in one_line(r.stderr)
    assert "OpenSSL-based servers (mtlskit serve, nginx) refuse it" in r.stderr
    # ... as OpenSSL itself does
    o = subprocess.run(["openssl", "verify", "-CAfile", client, client], capture_output=True)
    assert o.returncode != 0
    # a self-signed certificate pinned in the CA file is fine for both
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-noenc", "-keyout", tmp_path / "ss.key", "-out", tmp_path / "ss.crt", "-subj", "/CN=ss",
         "-addext", "basicConstraints=critical,CA:FALSE", "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert run_cli("verify", tmp_path / "ss.crt", "--ca", tmp_path / "ss.crt").returncode == 0
    o = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ss.crt", tmp_path / "ss.crt"])
    assert o.returncode == 0


# -- every wrong file named the same way -----------------------------------------------------


@pytest.fixture
def wrong(certs: Path, tmp_path: Path) -> dict[str, Path]:
    """Files that are not what a command wants, each of a kind a user mixes up."""
    assert run_cli("export", "p12", "--cert", certs / "client.crt", "--key", certs / "client.key",
                   "--no-password", "-o", tmp_path / "client.p12").returncode == 0  # fmt: skip
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    lone = tmp_path / "lone" / "client.crt"  # a certificate without its key beside it
    lone.parent.mkdir()
    shutil.copy(certs / "client.crt", lone)
    (tmp_path / "empty.crt").write_bytes(b"")
    return {
        "csr": certs / "client.csr",
        "p12": tmp_path / "client.p12",
        "key": certs / "client.key",
        "crl": certs / "ca.crl",
        "empty": tmp_path / "empty.crt",
        "lone": lone,
    }


EXPECTED_A_CERTIFICATE = {
    "csr": "expected a certificate, found a certificate request (CSR) ({f}): a CSR becomes a "
    "certificate once signed (mtlskit sign); pass the .crt file",
    "p12": "expected a certificate, found a PKCS#12 file ({f}): pass the certificate and its key "
    "as PEM files: the .crt and .key it was made from, or extract them with "
    "openssl pkcs12 -in {f} -noenc",
    "key": "expected a certificate, found a private key ({f}): pass the certificate (.crt) file",
    "crl": "expected a certificate, found a CRL ({f}): pass the certificate (.crt) file",
    "empty": "expected a certificate, found an empty file ({f}): pass the certificate (.crt) file",
}


@pytest.mark.slow  # nine commands per kind of file, each a process
@pytest.mark.parametrize("kind", sorted(EXPECTED_A_CERTIFICATE))
def test_a_wrong_certificate_file_is_named_alike_everywhere(
    kind: str, certs: Path, wrong: dict[str, Path]
) -> None:
    f = wrong[kind]
    expected = "error: " + EXPECTED_A_CERTIFICATE[kind].format(f=f)
    commands = [
        ["get", "https://127.0.0.1:9", "--certs", certs, "--cert", f, "--key", certs / "client.key"],
        ["get", "https://127.0.0.1:9", "--certs", certs, "--cacert", f],
        ["serve", "--certs", certs, "--cert", f, "--host", "127.0.0.1", "--port", "0"],
        ["serve", "--certs", certs, "--ca", f, "--host", "127.0.0.1", "--port", "0"],
        ["verify", f, "--ca", certs / "ca.crt"],
        ["verify", certs / "client.crt", "--ca", f],
        ["renew", f, "--ca-dir", certs],
        ["revoke", f, "--ca-dir", certs],
        ["export", "p12", "--cert", f, "--key", certs / "client.key", "--no-password",
         "-o", f.with_suffix(".out.p12")],
    ]  # fmt: skip
    for args in commands:
        r = run_cli(*args, timeout=30)
        assert (r.returncode, one_line(r.stderr)) == (1, expected), args


def test_wrong_key_files_and_a_missing_key(certs: Path, wrong: dict[str, Path]) -> None:
    for kind, found in (("csr", "a certificate request (CSR)"), ("crl", "a CRL")):
        f = wrong[kind]
        expected = (
            f"error: expected a private key, found {found} ({f}): pass the private key (.key) file"
        )
        for args in (
            ["get", "https://127.0.0.1:9", "--certs", certs, "--key", f],
            ["serve", "--certs", certs, "--key", f, "--host", "127.0.0.1", "--port", "0"],
            ["verify", certs / "client.crt", "--key", f, "--ca", certs / "ca.crt"],
            ["export", "p12", "--cert", certs / "client.crt", "--key", f, "--no-password"],
        ):
            r = run_cli(*args, timeout=30)
            assert (r.returncode, one_line(r.stderr)) == (1, expected), args
    lone = wrong["lone"]
    r = run_cli("get", "https://127.0.0.1:9", "--certs", certs, "--cert", lone)
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        f"error: no private key for the certificate: {lone.with_suffix('.key')} does not exist "
        f"and the certificate file holds no key ({lone}): pass its key with --key FILE"
    )
    r = run_cli("get", "https://127.0.0.1:9", "--certs", certs, "--cert", wrong["p12"])
    assert "found a PKCS#12 file" in one_line(r.stderr)


def test_wrong_csr_and_crl_files(certs: Path, wrong: dict[str, Path]) -> None:
    r = run_cli("sign", certs / "client.crt", "--ca-dir", certs, "--profile", "client")
    assert one_line(r.stderr) == (
        f"error: expected a certificate request (CSR), found a certificate "
        f"({certs / 'client.crt'}): pass the .csr file (mtlskit csr create makes one)"
    )
    r = run_cli("sign", wrong["p12"], "--ca-dir", certs, "--profile", "client")
    assert "expected a certificate request (CSR), found a PKCS#12 file" in one_line(r.stderr)
    for args in (
        ["verify", certs / "client.crt", "--ca", certs / "ca.crt", "--crl", certs / "client.crt"],
        ["serve", "--certs", certs, "--crl", certs / "client.crt", "--port", "0"],
    ):
        r = run_cli(*args, timeout=30)
        assert one_line(r.stderr) == (
            f"error: expected a CRL, found a certificate ({certs / 'client.crt'}): "
            "pass the .crl file (mtlskit crl makes one)"
        ), args


def test_revoke_of_a_missing_file_says_not_found(certs: Path) -> None:
    r = run_cli("revoke", "missing.crt", "--ca-dir", certs)
    assert (r.returncode, one_line(r.stderr)) == (
        1,
        "error: certificate not found (missing.crt): check the path, or give a serial as "
        "mtlskit list shows it",
    )


# -- CAs of one name -------------------------------------------------------------------------


def test_ca_create_names_each_ca_apart(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run_cli("ca", "create", "--dir", tmp_path / name / "ca").returncode == 0
    a, b = (crt(tmp_path / n / "ca" / "ca.crt").subject for n in ("a", "b"))
    assert a != b
    assert a.rfc4514_string().startswith("CN=ca CA ") and b.rfc4514_string().startswith("CN=ca CA ")
    assert run_cli("ca", "create", "--dir", tmp_path / "sub", "--parent-dir",
                   tmp_path / "a" / "ca").returncode == 0  # fmt: skip
    assert "CN=sub Intermediate CA " in crt(tmp_path / "sub" / "ca.crt").subject.rfc4514_string()


def test_same_named_cas_are_told_apart_by_their_keys(certs: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    same = "/C=TH/ST=RB/O=IT Sec/CN=CA"  # what every `ca create` used to be
    assert run_cli("ca", "create", "--dir", twin, "--subject", same).returncode == 0
    assert run_cli("issue", "client", "bob", "--ca-dir", twin).returncode == 0
    ours = x509.SubjectKeyIdentifier.from_public_key(crt(certs / "ca.crt").public_key()).digest
    theirs = x509.SubjectKeyIdentifier.from_public_key(crt(twin / "ca.crt").public_key()).digest

    def kid(digest: bytes) -> str:
        return "key id " + ":".join(f"{b:02X}" for b in digest[:8]) + "…"

    r = run_cli("revoke", twin / "bob.crt", "--ca-dir", certs)
    assert one_line(r.stderr) == (
        "error: certificate was not issued by this CA (issuer C=TH, ST=RB, O=IT Sec, CN=CA "
        f"({kid(theirs)}), CA is C=TH, ST=RB, O=IT Sec, CN=CA ({kid(ours)})) "
        f"({twin / 'bob.crt'}): pass --ca-dir of the CA that signed it"
    )
    r = run_cli("verify", twin / "bob.crt", "--ca", certs / "ca.crt")
    assert kid(theirs) in r.stderr and kid(ours) in r.stderr
    assert "another CA with the same name" in one_line(r.stderr)


# -- hints ---------------------------------------------------------------------------------


def test_hints_are_single_and_paste_into_a_shell(certs: Path, tmp_path: Path) -> None:
    folder = tmp_path / "uni"
    r = run_cli("csr", "create", "my web", "--dir", folder)
    assert r.returncode == 0, r.stderr
    hint = next(line for line in r.stdout.splitlines() if line.startswith("next: "))
    assert hint == f"next: mtlskit sign '{folder}/my web.csr' --ca-dir certs --profile client"
    # pasted as printed (from the folder holding certs/), it signs
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["bash", "-c", hint.removeprefix("next: ")], cwd=certs.parent, capture_output=True,
        text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (folder / "my web.crt").exists()
    # one hint, not two
    init_seed(tmp_path / "other")
    assert run_cli("crl", "--ca-dir", tmp_path / "other").returncode == 0
    r = run_cli("verify", certs / "server.crt", "--ca", certs / "ca.crt",
                "--crl", tmp_path / "other" / "ca.crl")  # fmt: skip
    assert one_line(r.stderr).count("mtlskit crl --ca-dir") == 1
    # click's sentences lose their full stop before ours go on
    r = run_cli("issue", "server", "x", "--ca-dir", certs, "--days", "0")
    assert r.returncode == 2 and ".:" not in one_line(r.stderr)
    assert r.stderr.endswith("is not in the range x>=1: see 'mtlskit issue --help'\n")


def test_inspect_counts_days_as_list_does_and_separates_a_chain(certs: Path) -> None:
    chain = certs / "chain.pem"
    chain.write_bytes((certs / "server.crt").read_bytes() + (certs / "ca.crt").read_bytes())
    r = run_cli("inspect", chain)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"== {chain}\n") and f"\n\n== {chain} (2)\n" in r.stdout
    assert "(valid, 365 days left)" in r.stdout and "(valid, 3650 days left)" in r.stdout
    listed = run_cli("list", "--ca-dir", certs).stdout
    assert "  365  " in listed and "  364  " not in listed
