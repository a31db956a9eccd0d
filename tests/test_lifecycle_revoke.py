"""Revocation: mtlskit revoke / crl, real CRLs checked by openssl and by real handshakes."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki.ca import CA, SEED_CA_SUBJECT
from mtlskit.pki.crl import (
    REASONS,
    build_crl,
    check_crl,
    is_revoked,
    make_crl,
    parse_reason,
    read_crl,
    write_crl,
)
from mtlskit.pki.inventory import DB_NAME, Inventory, serial_hex
from mtlskit.pki.seed import init_seed
from mtlskit.tls import client_context, server_context
from tests.support.processes import run_cli


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    return folder


def _serial(path: Path) -> str:
    return serial_hex(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def test_revoke_by_file_and_by_serial_then_crl(certs: Path) -> None:
    ca = CA.load(certs)
    bob = ca.issue("client", "CN=bob")
    bob.save(certs, "bob")
    r = run_cli("revoke", certs / "client.crt", "--ca-dir", certs, "--reason", "key-compromise")
    assert r.returncode == 0, r.stderr
    assert "mtlskit crl" in r.stdout
    r = run_cli("revoke", serial_hex(bob.certificate.serial_number)[:10], "--ca-dir", certs)
    assert r.returncode == 0, r.stderr

    r = run_cli("crl", "--ca-dir", certs, "--days", "7")
    assert r.returncode == 0, r.stderr
    crl = read_crl(certs / "ca.crl")
    assert check_crl(crl, [ca.certificate]) == ca.certificate
    client = x509.load_pem_x509_certificate((certs / "client.crt").read_bytes())
    entry = is_revoked(client, crl)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert is_revoked(bob.certificate, crl) is not None
    server = x509.load_pem_x509_certificate((certs / "server.crt").read_bytes())
    assert is_revoked(server, crl) is None
    assert crl.next_update_utc is not None
    left = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6, hours=23) < left <= dt.timedelta(days=7)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    # The CRL number only goes up.
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    again = read_crl(certs / "ca.crl")
    assert again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > first

    # Real openssl agrees: the revoked client fails, the server passes.
    def verify(cert: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl",
                "verify",
                "-crl_check",
                "-CAfile",
                certs / "ca.crt",
                "-CRLfile",
                certs / "ca.crl",
                certs / cert,
            ],
            capture_output=True,
            text=True,
        )

    assert verify("server.crt").returncode == 0
    bad = verify("client.crt")
    assert bad.returncode != 0 and "revoked" in bad.stdout + bad.stderr


def test_revoking_a_revoked_serial_changes_nothing(certs: Path) -> None:
    assert run_cli("revoke", certs / "client.crt", "--ca-dir", certs).returncode == 0
    rec = Inventory.open(certs, CA.load(certs).certificate).get(_serial(certs / "client.crt"))
    r = run_cli("revoke", certs / "client.crt", "--ca-dir", certs, "--reason", "superseded")
    assert r.returncode == 1
    assert "is already revoked" in r.stderr and r.stderr.count("\n") == 1
    again = Inventory.open(certs, CA.load(certs).certificate).get(rec.serial)
    assert again == rec  # same time, same reason


def test_revoke_bad_input(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_seed(other)
    r = run_cli("revoke", other / "client.crt", "--ca-dir", certs)
    assert r.returncode == 1
    assert r.stderr.startswith("error: certificate was not issued by this CA")
    r = run_cli("revoke", "abcdef0123", "--ca-dir", certs)
    assert r.returncode == 1 and "no certificate with serial abcdef0123" in r.stderr
    r = run_cli("revoke", "not-a-serial", "--ca-dir", certs)
    assert r.returncode == 2 and "neither a certificate file nor a hex serial" in r.stderr
    r = run_cli("revoke", certs / "client.crt", "--ca-dir", certs, "--reason", "bored")
    assert r.returncode == 2 and "unknown revocation reason" in r.stderr
    assert all(status == "valid" for status in _statuses(certs))


def _statuses(certs: Path) -> list[str]:
    return [r.status for r in Inventory.open(certs, CA.load(certs).certificate).records()]


def test_reason_names_are_rfc5280() -> None:
    assert "keyCompromise" in REASONS and "removeFromCRL" not in REASONS
    assert parse_reason("KEY_COMPROMISE") is x509.ReasonFlags.key_compromise
    assert parse_reason("cACompromise") is x509.ReasonFlags.ca_compromise
    with pytest.raises(ConfigError):
        parse_reason("removeFromCRL")


def test_crl_signed_by_the_wrong_key_is_refused(certs: Path, tmp_path: Path) -> None:
    ca = CA.load(certs)
    # Same subject as the real CA, another key: only the signature tells them apart.
    impostor = CA.create(SEED_CA_SUBJECT)
    forged = build_crl(impostor, [], number=99)
    with pytest.raises(PKIError, match="signed by another key"):
        check_crl(forged, [ca.certificate])
    stranger = build_crl(CA.create("CN=Stranger"), [], number=1)
    with pytest.raises(PKIError, match="not by the CA"):
        check_crl(stranger, [ca.certificate])
    expired = build_crl(ca, [], number=1, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(2))
    with pytest.raises(PKIError, match="CRL expired"):
        check_crl(expired, [ca.certificate])

    # A folder without inventory whose ca.crl another key signed: adoption refuses it,
    # and leaves no database behind.
    (certs / DB_NAME).unlink()
    write_crl(forged, certs / "ca.crl")
    r = run_cli("list", "--ca-dir", certs, "--adopt")
    assert r.returncode == 1
    assert r.stderr.startswith("error: CRL names CN=CA") and r.stderr.count("\n") == 1
    assert "signed by another key (key id " in r.stderr  # two CAs of one name told apart
    assert not (certs / DB_NAME).exists()


def test_adoption_keeps_the_revocations_of_an_existing_crl(certs: Path) -> None:
    ca = CA.load(certs)
    gone = ca.issue("client", "CN=gone")  # not saved in the folder: known from the CRL only
    inv = Inventory.open(certs, ca.certificate)
    inv.revoke(serial_hex(gone.certificate.serial_number), "keyCompromise")
    crl = make_crl(ca)
    write_crl(crl, certs / "ca.crl")
    for f in certs.glob(f"{DB_NAME}*"):
        f.unlink()
    assert run_cli("list", "--ca-dir", certs, "--adopt").returncode == 0
    again = make_crl(CA.load(certs))
    assert is_revoked(gone.certificate, again) is not None
    number = again.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1


# -- real handshakes ----------------------------------------------------------------------------


class TinyServer:
    """A minimal stdlib TLS server: one thread, one connection at a time, hello world."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n")
            except (ssl.SSLError, OSError) as exc:
                self.refused.append(str(exc))
                raw.close()

    def __enter__(self) -> TinyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _get(port: int, ctx: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        # With TLS 1.3 a refused client certificate only shows on the first read.
        return tls.recv(4096)


@pytest.fixture
def two_clients(certs: Path) -> Iterator[Path]:
    ca = CA.load(certs)
    ca.issue("client", "CN=mallory").save(certs, "mallory")
    yield certs


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
def test_revoked_client_is_refused_while_another_is_served(two_clients: Path, tls12: bool) -> None:
    certs = two_clients
    assert run_cli("revoke", certs / "mallory.crt", "--ca-dir", certs).returncode == 0
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    ctx = server_context(
        certs / "server.crt", certs / "server.key", certs / "ca.crt", crl=certs / "ca.crl"
    )
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    good = client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    bad = client_context(certs / "ca.crt", certs / "mallory.crt", certs / "mallory.key")
    with TinyServer(ctx) as srv:
        assert _get(srv.port, good).endswith(b"hello world\n")
        # The client sees the alert "certificate revoked", or, when its request crossed
        # the server's close, a reset: the server's side says why, every time.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _get(srv.port, bad)
        assert _get(srv.port, good).endswith(b"hello world\n")  # still serving others
    assert len(srv.refused) == 1 and "revoked" in srv.refused[0].lower()


def test_openssl_seed_client_can_be_revoked(seed_certs_openssl: Path, tmp_path: Path) -> None:
    """The seed's exact openssl PKI (v1 CA, RSA-4096): adopt, revoke, CRL, refused."""
    certs = tmp_path / "certs"
    shutil.copytree(seed_certs_openssl, certs)
    assert run_cli("list", "--ca-dir", certs, "--adopt").returncode == 0
    r = run_cli("revoke", certs / "client.crt", "--ca-dir", certs, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "revoked"
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    ctx = server_context(
        certs / "server.crt", certs / "server.key", certs / "ca.crt", crl=certs / "ca.crl"
    )
    bad = client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    with TinyServer(ctx) as srv, pytest.raises((ssl.SSLError, ConnectionResetError)):
        _get(srv.port, bad)
