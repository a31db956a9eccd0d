"""ca create, csr create, sign, issue: real files, checked by real openssl."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.processes import run_cli

pytestmark = pytest.mark.interop  # real openssl reads what we write


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def ok(*args: str | Path) -> str:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root (pathlen 1) → intermediate → server leaf; a client from the root."""
    d = tmp_path_factory.mktemp("pki")
    ok(
        "ca",
        "create",
        "--dir",
        d / "root",
        "--subject",
        "/C=TH/O=IT Sec/CN=Root",
        "--path-length",
        "1",
    )
    ok("ca", "create", "--dir", d / "inter", "--parent-dir", d / "root", "--subject", "CN=Issuing")
    ok(
        "issue",
        "server",
        "web",
        "--ca-dir",
        d / "inter",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
    )
    ok("issue", "client", "alice", "--ca-dir", d / "root", "--dir", d / "people")
    return d


def test_ca_create_root_is_a_proper_ca(pki: Path) -> None:
    root = cert(pki / "root" / "ca.crt")
    assert root.subject.rfc4514_string() == "CN=Root,O=IT Sec,C=TH"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert (pki / "root" / "ca.key").stat().st_mode & 0o777 == 0o600
    text = openssl("x509", "-in", pki / "root" / "ca.crt", "-noout", "-text")
    assert "CA:TRUE, pathlen:1" in text.stdout


def test_intermediate_chain_verifies_with_openssl(pki: Path) -> None:
    inter = cert(pki / "inter" / "ca.crt")
    assert inter.issuer == cert(pki / "root" / "ca.crt").subject
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    # web.crt is the leaf followed by the intermediate, as a server sends it.
    assert len(x509.load_pem_x509_certificates((pki / "inter" / "web.crt").read_bytes())) == 2
    r = openssl(
        "verify",
        "-CAfile", pki / "root" / "ca.crt",
        "-untrusted", pki / "inter" / "ca.crt",
        "-purpose", "sslserver",
        pki / "inter" / "web.crt",
    )  # fmt: skip
    assert r.returncode == 0 and ": OK" in r.stdout, r.stdout + r.stderr
    r = openssl(
        "verify", "-CAfile", pki / "root" / "ca.crt", "-purpose", "sslclient",
        pki / "people" / "alice.crt",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # ...and our own verify agrees, with the bundle's intermediate.
    out = ok(
        "verify", pki / "inter" / "web.crt", "--ca", pki / "root" / "ca.crt",
        "--host", "127.0.0.1", "--purpose", "server",
    )  # fmt: skip
    assert "OK" in out and "CN=Issuing" in out and "cryptography" in out


def test_intermediate_with_pathlen_0_cannot_sign_a_ca(pki: Path, tmp_path: Path) -> None:
    r = run_cli("ca", "create", "--dir", tmp_path / "sub", "--parent-dir", pki / "inter")
    assert r.returncode == 2 and "path length 0" in r.stderr
    assert not (tmp_path / "sub").exists()


def test_issue_writes_key_csr_crt(pki: Path) -> None:
    web = cert(pki / "inter" / "web.crt")
    assert web.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"
    sans = web.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in sans.get_values_for_type(x509.DNSName)] == ["localhost"]
    eku = web.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    for ext, mode in (("key", 0o600), ("csr", 0o644), ("crt", 0o644)):
        assert (pki / "people" / f"alice.{ext}").stat().st_mode & 0o777 == mode
    alice = cert(pki / "people" / "alice.crt")
    eku = alice.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = alice.not_valid_after_utc - alice.not_valid_before_utc
    assert 365 <= lifetime.days <= 366


def test_issue_server_defaults_san_to_name_and_refuses_overwrite(pki: Path) -> None:
    out = pki / "extra"
    ok("issue", "server", "api.example.com", "--ca-dir", pki / "root", "--dir", out, "--days", "30")
    c = cert(out / "api.example.com.crt")
    sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in sans.get_values_for_type(x509.DNSName)] == ["api.example.com"]
    assert (c.not_valid_after_utc - c.not_valid_before_utc).days == 30
    before = (out / "api.example.com.key").read_bytes()
    r = run_cli("issue", "server", "api.example.com", "--ca-dir", pki / "root", "--dir", out)
    assert r.returncode == 1 and r.stderr.startswith("error: file exists")
    assert (out / "api.example.com.key").read_bytes() == before


def test_csr_create_then_sign_like_openssl(pki: Path, tmp_path: Path) -> None:
    out = ok(
        "csr", "create", "svc", "--dir", tmp_path, "--subject", "/O=Dev/CN=svc",
        "--san", "svc.internal", "--san", "spiffe://example.org/svc", "--key-type", "rsa2048",
    )  # fmt: skip
    assert "svc.csr" in out
    r = openssl("req", "-in", tmp_path / "svc.csr", "-noout", "-verify", "-text")
    assert r.returncode == 0, r.stderr
    assert "verify OK" in r.stdout + r.stderr
    assert "DNS:svc.internal" in r.stdout and "URI:spiffe://example.org/svc" in r.stdout
    ok(
        "sign", tmp_path / "svc.csr", "--ca-dir", pki / "root", "--profile", "server-client",
        "--not-after", "2027-06-30",
    )  # fmt: skip
    c = cert(tmp_path / "svc.crt")
    assert c.subject.rfc4514_string() == "CN=svc,O=Dev"
    assert c.not_valid_after_utc.date().isoformat() == "2027-06-30"
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = c.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment  # RSA key
    r = openssl("verify", "-CAfile", pki / "root" / "ca.crt", tmp_path / "svc.crt")
    assert r.returncode == 0, r.stdout + r.stderr
    text = openssl("x509", "-in", tmp_path / "svc.crt", "-noout", "-text").stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text


def test_sign_with_san_overrides_the_csr(pki: Path, tmp_path: Path) -> None:
    ok(
        "csr",
        "create",
        "--key",
        tmp_path / "k.pem",
        "--out",
        tmp_path / "r.csr",
        "--subject",
        "CN=x",
    )
    ok(
        "sign", tmp_path / "r.csr", "--ca-dir", pki / "root", "--profile", "server",
        "--san", "a.example", "-o", tmp_path / "r.pem",
    )  # fmt: skip
    sans = cert(tmp_path / "r.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(v) for v in sans.value.get_values_for_type(x509.DNSName)] == ["a.example"]


def test_csr_create_reuses_an_existing_key(tmp_path: Path) -> None:
    ok("csr", "create", "one", "--dir", tmp_path)
    key = (tmp_path / "one.key").read_bytes()
    out = ok(
        "csr",
        "create",
        "--key",
        tmp_path / "one.key",
        "--out",
        tmp_path / "two.csr",
        "--subject",
        "CN=two",
    )
    assert "used existing key" in out
    assert (tmp_path / "one.key").read_bytes() == key
    a = x509.load_pem_x509_csr((tmp_path / "one.csr").read_bytes()).public_key()
    b = x509.load_pem_x509_csr((tmp_path / "two.csr").read_bytes()).public_key()
    assert a == b


def test_encrypted_ca_key_with_passphrase_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    ok("ca", "create", "--dir", tmp_path / "ca", "--passphrase-file", pw, "--key-type", "p384")
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "ca" / "ca.key").read_bytes()
    r = openssl("pkey", "-in", tmp_path / "ca" / "ca.key", "-passin", f"file:{pw}", "-noout")
    assert r.returncode == 0, r.stderr
    # Without the passphrase (no terminal to ask on): a one-line error naming the option.
    r = run_cli("issue", "client", "bob", "--ca-dir", tmp_path / "ca")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "encrypted" in r.stderr and "--ca-passphrase-file" in r.stderr
    assert not (tmp_path / "ca" / "bob.key").exists()
    ok("issue", "client", "bob", "--ca-dir", tmp_path / "ca", "--ca-passphrase-file", pw,
       "--passphrase-file", pw)  # fmt: skip
    assert b"ENCRYPTED" in (tmp_path / "ca" / "bob.key").read_bytes()
    r = openssl("verify", "-CAfile", tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "bob.crt")
    assert r.returncode == 0, r.stdout


def test_passphrase_prompt(tmp_path: Path) -> None:
    """--passphrase asks twice on a terminal; without one it is a usage error, no warning."""
    shown = run_on_terminal(
        ["csr", "create", "p", "--dir", tmp_path, "--passphrase"], ["pw1", "pw1"]
    )
    assert "Passphrase" in shown and "pw1" not in shown  # asked for, never echoed
    r2 = openssl("pkey", "-in", tmp_path / "p.key", "-passin", "pass:pw1", "-noout")
    assert r2.returncode == 0, r2.stderr
    # A new session has no controlling terminal (as under cron or CI), stdin is a pipe.
    r = subprocess.run(
        [sys.executable, "-m", "mtlskit", "ca", "create", "--dir", tmp_path / "ca", "--passphrase"],
        input="pw\npw\n", capture_output=True, text=True, start_new_session=True, timeout=60,
    )  # fmt: skip
    assert (r.returncode, r.stderr) == (
        2,
        "error: no terminal to ask for the passphrase: use --passphrase-file\n",
    )
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("key_type", ["ed25519", "rsa3072"])
def test_ca_key_types(tmp_path: Path, key_type: str) -> None:
    ok("ca", "create", "--dir", tmp_path, "--key-type", key_type, "--days", "30")
    ok("issue", "server", "localhost", "--ca-dir", tmp_path, "--key-type", key_type)
    r = openssl("verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "localhost.crt")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # the seed's three RSA-4096 keys (session fixture)
@pytest.mark.interop
def test_sign_the_seeds_openssl_csr_with_the_seeds_ca(
    seed_certs_openssl: Path, tmp_path: Path
) -> None:
    """Our sign on the seed's RSA-4096 CA folder and openssl-made CSR (copied: signing
    records into the CA folder's inventory)."""
    d = tmp_path / "certs"
    shutil.copytree(seed_certs_openssl, d)
    ok("sign", d / "server.csr", "--ca-dir", d, "--profile", "server", "--san", "localhost",
       "--san", "127.0.0.1", "-o", d / "server-mtlskit.crt")  # fmt: skip
    r = openssl(
        "verify", "-CAfile", d / "ca.crt", "-purpose", "sslserver", d / "server-mtlskit.crt"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("verify", d / "server-mtlskit.crt", "--ca", d / "ca.crt", "--host", "localhost",
                "--key", d / "server.key")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_intermediate_under_a_v1_ca(tmp_path: Path) -> None:
    """A v1 root (openssl x509 -req -signkey, no extensions) can still sign an intermediate."""
    script = """
    set -e
    mkdir root && cd root
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -subj /CN=Old -out ca.csr
    openssl x509 -req -in ca.csr -signkey ca.key -days 30 -out ca.crt
    """
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    ok("ca", "create", "--dir", tmp_path / "sub", "--parent-dir", tmp_path / "root")
    ok("issue", "client", "c", "--ca-dir", tmp_path / "sub")
    r = openssl("verify", "-CAfile", tmp_path / "root" / "ca.crt", "-untrusted",
                tmp_path / "sub" / "ca.crt", tmp_path / "sub" / "c.crt")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = ok("verify", tmp_path / "sub" / "c.crt", "--ca", tmp_path / "root" / "ca.crt",
             "--purpose", "client")  # fmt: skip
    assert "mtlskit chain check" in out


def run_on_terminal(args: list[str | Path], answers: list[str], timeout: float = 30) -> str:
    """Run mtlskit on a pseudo-terminal (its controlling tty) and answer each prompt."""
    master, slave = pty.openpty()

    def become_tty_owner() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlskit", *map(str, args)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=become_tty_owner,
    )
    os.close(slave)
    out = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            # Answer a prompt only once it is shown: getpass flushes earlier input.
            if pending and out[answered:].rstrip().endswith(b":"):
                os.write(master, pending.pop(0).encode() + b"\n")
                answered = len(out)
        proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_encrypted_ca_key_is_asked_for_on_a_terminal(tmp_path: Path) -> None:
    out = run_on_terminal(["ca", "create", "--dir", tmp_path, "--passphrase"], ["pw42", "pw42"])
    assert "Repeat for confirmation" in out
    out = run_on_terminal(["issue", "client", "carol", "--ca-dir", tmp_path], ["pw42"])
    assert f"Passphrase for {tmp_path / 'ca.key'}" in out
    assert "pw42" not in out  # not echoed
    r = openssl("verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "carol.crt")
    assert r.returncode == 0, r.stdout
