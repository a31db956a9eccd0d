"""mtlskit renew: due at 2/3 of the lifetime, exit 3 when not due, in place, against ca.db."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.pki.ca import CA
from mtlskit.pki.inventory import Inventory, serial_hex
from mtlskit.pki.keys import key_matches, load_private_key
from mtlskit.pki.seed import init_seed
from tests.support.pki import aged
from tests.support.processes import run_cli


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    return folder


def test_not_due_exits_3_and_changes_nothing(certs: Path) -> None:
    before = (certs / "server.crt").read_bytes()
    r = run_cli("renew", certs / "server.crt", "--ca-dir", certs)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("not due") and "--force" in r.stdout
    assert (certs / "server.crt").read_bytes() == before
    j = run_cli("renew", certs / "server.crt", "--ca-dir", certs, "--json")
    assert j.returncode == 3 and json.loads(j.stdout)["renewed"] is False


def test_due_certificate_is_renewed_in_place(certs: Path) -> None:
    ca = CA.load(certs)
    old = aged(ca, certs, "api", lifetime_days=90, age_days=61, profile="server-client")
    old_key = (certs / "api.key").read_bytes()
    r = run_cli("renew", certs / "api.crt", "--ca-dir", certs)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("renewed")
    new = x509.load_pem_x509_certificate((certs / "api.crt").read_bytes())
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    san = x509.SubjectAlternativeName
    assert (
        new.extensions.get_extension_for_class(san).value
        == old.extensions.get_extension_for_class(san).value
    )
    eku = x509.ExtendedKeyUsage
    assert list(new.extensions.get_extension_for_class(eku).value) == list(
        old.extensions.get_extension_for_class(eku).value
    )
    lifetime = new.not_valid_after_utc - new.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(days=90)) < dt.timedelta(minutes=2)
    assert (certs / "api.key").read_bytes() == old_key  # same key unless --new-key
    assert (certs / "api.crt").stat().st_mode & 0o777 == 0o644
    rec = Inventory.open(certs, ca.certificate).get(serial_hex(new.serial_number))
    assert rec.renewed_from == serial_hex(old.serial_number)
    assert rec.profile == "server-client"
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", certs / "ca.crt", certs / "api.crt"], capture_output=True
    )
    assert ok.returncode == 0
    # Renewed: not due again.
    assert run_cli("renew", certs / "api.crt", "--ca-dir", certs).returncode == 3


def test_renew_new_key_and_force(certs: Path) -> None:
    ca = CA.load(certs)
    aged(ca, certs, "rsa", lifetime_days=30, age_days=1, key_type="rsa2048")
    old_key = (certs / "rsa.key").read_bytes()
    r = run_cli("renew", certs / "rsa.crt", "--ca-dir", certs, "--force", "--new-key", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["renewed"] is True and out["key_file"] == str(certs / "rsa.key")
    key = load_private_key((certs / "rsa.key").read_bytes())
    assert (certs / "rsa.key").read_bytes() != old_key
    assert (certs / "rsa.key").stat().st_mode & 0o777 == 0o600
    new = x509.load_pem_x509_certificate((certs / "rsa.crt").read_bytes())
    assert key_matches(key, new.public_key())
    assert "RSA" in type(key).__name__ and key.key_size == 2048  # type: ignore[union-attr]


def test_renew_refuses_what_the_ca_never_issued(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_seed(other)
    before = (other / "server.crt").read_bytes()
    r = run_cli("renew", other / "server.crt", "--ca-dir", certs, "--force")
    assert r.returncode == 1
    assert r.stderr.startswith("error: certificate was not issued by this CA")
    assert r.stderr.count("\n") == 1
    assert (other / "server.crt").read_bytes() == before

    # Signed with this CA's key, but outside the inventory (a CA object without a folder).
    ca = CA.load(certs)
    count = Inventory.open(certs, ca.certificate).count()
    stray = CA(ca.certificate, ca.private_key).issue("client", "CN=stray")
    stray.save(tmp_path, "stray")
    r = run_cli("renew", tmp_path / "stray.crt", "--ca-dir", certs, "--force")
    assert r.returncode == 1 and "has no record of certificate" in r.stderr
    assert Inventory.open(certs, ca.certificate).count() == count


def test_renew_refuses_a_revoked_certificate(certs: Path) -> None:
    assert run_cli("revoke", certs / "client.crt", "--ca-dir", certs).returncode == 0
    before = (certs / "client.crt").read_bytes()
    r = run_cli("renew", certs / "client.crt", "--ca-dir", certs, "--force")
    assert r.returncode == 1 and "is revoked" in r.stderr
    assert (certs / "client.crt").read_bytes() == before


def test_renew_of_a_missing_or_broken_file(certs: Path) -> None:
    r = run_cli("renew", certs / "nope.crt", "--ca-dir", certs)
    assert r.returncode == 1 and r.stderr.startswith("error: certificate not found")
    r = run_cli("renew", certs / "client.key", "--ca-dir", certs)
    assert r.returncode == 1 and "expected a certificate" in r.stderr
