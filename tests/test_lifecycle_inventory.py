"""The CA inventory (ca.db): every issuance recorded, unique serials across processes."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki import inventory as inventory_mod
from mtlskit.pki.ca import CA
from mtlskit.pki.inventory import DB_NAME, Inventory, serial_hex
from mtlskit.pki.keys import generate_key
from mtlskit.pki.names import parse_name
from mtlskit.pki.seed import init_seed
from tests.support.processes import ROOT, run_cli

WORKER = """
import sys
from mtlskit.pki.ca import CA
from mtlskit.pki.keys import generate_key
from mtlskit.pki.names import parse_name

ca = CA.load(sys.argv[1])
key = generate_key().public_key()
out = []
for i in range(int(sys.argv[3])):
    cert = ca.sign_public_key(key, parse_name(f"CN=w{sys.argv[2]}-{i}"), profile="client")
    out.append(format(cert.serial_number, "x"))
print("\\n".join(out))
"""


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    return folder


def _db_rows(folder: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(folder / DB_NAME)
    try:
        return conn.execute("SELECT serial, status FROM certs ORDER BY serial").fetchall()
    finally:
        conn.close()


def test_init_creates_wal_inventory_with_its_certificates(certs: Path) -> None:
    conn = sqlite3.connect(certs / DB_NAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    r = run_cli("list", "--ca-dir", certs, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert sorted(row["subject"] for row in rows) == [
        "CN=client,O=Dev,ST=RB,C=TH",
        "CN=localhost,O=Dev,ST=RB,C=TH",
    ]
    server = next(row for row in rows if row["profile"] == "server")
    assert server["sans"] == ["DNS:localhost", "DNS:www.example.com", "IP:127.0.0.1"]
    assert server["status"] == "valid" and 364 < server["days_left"] <= 365.01
    table = run_cli("list", "--ca-dir", certs)
    assert table.returncode == 0 and table.stdout.startswith("SERIAL")
    assert "\x1b[" not in table.stdout  # no colour when not a terminal


def test_every_issuance_is_recorded_with_its_pem(certs: Path) -> None:
    ca = CA.load(certs)
    leaf = ca.issue("server-client", "CN=api", sans=["api.internal", "10.0.0.7"], days=30)
    rec = Inventory.open(certs, ca.certificate).get(serial_hex(leaf.certificate.serial_number))
    assert rec.certificate == leaf.certificate
    assert rec.profile == "server-client"
    assert rec.sans == ("DNS:api.internal", "IP:10.0.0.7")
    assert rec.source == "issued"
    # A CA without a folder (in memory) records nothing and needs no database.
    mem = CA.create("CN=mem")
    mem.issue("client", "CN=x")


@pytest.mark.slow
def test_four_processes_issue_1000_distinct_serials_all_recorded(certs: Path) -> None:
    before = len(_db_rows(certs))
    start = time.monotonic()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(certs), str(n), "250"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for n in range(4)
    ]
    serials: list[str] = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        serials += out.split()
    elapsed = time.monotonic() - start
    assert len(serials) == 1000
    assert len(set(serials)) == 1000
    rows = _db_rows(certs)
    assert len(rows) == before + 1000
    assert set(serials) <= {s for s, _ in rows}
    print(f"1000 issuances from 4 processes in {elapsed:.2f} s")


def test_serial_collision_is_retried_with_a_fresh_serial(
    certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CA.load(certs)
    taken = Inventory.open(certs, ca.certificate).records()[0].serial_int
    fresh = iter([taken, taken, 0x4242_4242_4242_4242_4242])
    monkeypatch.setattr(inventory_mod, "random_serial", lambda: next(fresh))
    leaf = ca.issue("client", "CN=retry")
    assert leaf.certificate.serial_number == 0x4242_4242_4242_4242_4242
    assert len(_db_rows(certs)) == 3


def test_issuing_in_the_callers_transaction(certs: Path) -> None:
    """A certificate recorded in the caller's transaction commits with it, or not at all;
    never in a transaction that does not wait for the disk (durable=False)."""
    ca = CA.load(certs)
    assert ca.inventory is not None
    inv = ca.inventory
    inv.check()
    key = generate_key().public_key()
    before = inv.count()
    with pytest.raises(RuntimeError), inv.database.transaction() as tx:
        ca.sign_public_key(key, parse_name("CN=undone"), profile="client", tx=tx)
        raise RuntimeError("the caller's other write failed")
    assert inv.count() == before
    with inv.database.transaction() as tx:
        cert = ca.sign_public_key(key, parse_name("CN=kept"), profile="client", tx=tx)
    assert inv.get(serial_hex(cert.serial_number)).subject == "CN=kept"
    with pytest.raises(PKIError, match="durable"), inv.database.transaction(durable=False) as tx:
        ca.sign_public_key(key, parse_name("CN=lost"), profile="client", tx=tx)
    assert inv.count() == before + 1


def test_a_window_set_by_not_before_is_signed_as_given(certs: Path) -> None:
    """``not_before`` sets the start (back-dated certificates, expired ones for tests),
    recorded like any other; without it a past ``not_after`` is still refused."""
    ca = CA.load(certs)
    assert ca.inventory is not None
    key = generate_key().public_key()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(days=11), now - dt.timedelta(days=1)
    cert = ca.sign_public_key(
        key, parse_name("CN=old"), profile="client", not_before=start, not_after=end
    )
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    assert ca.inventory.get(serial_hex(cert.serial_number)).subject == "CN=old"
    later = ca.sign_public_key(key, parse_name("CN=d"), profile="client", not_before=end, days=2)
    assert later.not_valid_after_utc - later.not_valid_before_utc == dt.timedelta(days=2)
    before = ca.inventory.count()
    with pytest.raises(ConfigError, match="is not after not_before"):
        ca.sign_public_key(
            key, parse_name("CN=x"), profile="client", not_before=end, not_after=start
        )
    with pytest.raises(ConfigError, match="is in the past"):
        ca.sign_public_key(key, parse_name("CN=x"), profile="client", not_after=end)
    assert ca.inventory.count() == before


def test_openssl_ca_gets_an_inventory_on_first_issuance(
    seed_certs_openssl: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "certs"
    shutil.copytree(seed_certs_openssl, folder)
    missing = run_cli("list", "--ca-dir", folder)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: CA folder has no inventory")
    assert "--adopt" in missing.stderr and missing.stderr.count("\n") == 1
    assert not (folder / DB_NAME).exists()  # nothing changed

    ca = CA.load(folder)
    ca.issue("client", "CN=new")
    recs = Inventory.open(folder, ca.certificate).records()
    by_subject = {r.subject: r for r in recs}
    # The seed's openssl certificates are adopted: the server (v3, SANs, no EKU) and
    # the v1 client.
    assert by_subject["CN=localhost,O=Dev,ST=RB,C=TH"].profile == "server-client"
    assert by_subject["CN=localhost,O=Dev,ST=RB,C=TH"].source == "adopted"
    assert by_subject["CN=client,O=Dev,ST=RB,C=TH"].profile == "client"
    assert by_subject["CN=new"].source == "issued"


def test_list_adopt_creates_the_inventory(seed_certs_openssl: Path, tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    shutil.copytree(seed_certs_openssl, folder)
    r = run_cli("list", "--ca-dir", folder, "--adopt", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 2
    assert "created" in r.stderr


def test_inventory_of_another_ca_is_refused(certs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_seed(other)
    shutil.copy(other / DB_NAME, certs / DB_NAME)  # a ca.db that belongs to another CA
    before = (certs / DB_NAME).read_bytes()
    for args in (
        ["list", "--ca-dir", certs],
        ["revoke", certs / "client.crt", "--ca-dir", certs],
        ["crl", "--ca-dir", certs],
        ["renew", certs / "server.crt", "--ca-dir", certs, "--force"],
    ):
        r = run_cli(*args)
        assert r.returncode == 1, args
        assert r.stderr.startswith("error: inventory belongs to another CA"), r.stderr
        assert r.stderr.count("\n") == 1
    ca = CA.load(certs)
    with pytest.raises(PKIError, match="another CA"):
        ca.issue("client", "CN=nope")
    assert (certs / DB_NAME).read_bytes() == before
    assert not (certs / "ca.crl").exists()


def test_garbage_database_is_refused(certs: Path) -> None:
    (certs / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    r = run_cli("list", "--ca-dir", certs)
    assert r.returncode == 1
    assert r.stderr.startswith("error: not an mtlskit inventory") and r.stderr.count("\n") == 1


def test_ca_save_creates_and_force_moves_another_cas_inventory_aside(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    first = CA.create("CN=First")
    first.save(folder)
    first.issue("client", "CN=a")
    assert Inventory.open(folder, first.certificate).count() == 1
    second = CA.create("CN=Second")
    with pytest.raises(PKIError, match="file exists"):
        second.save(folder)
    second.save(folder, force=True)
    assert Inventory.open(folder, second.certificate).count() == 0
    kept = list(folder.glob(f"{DB_NAME}.*.old"))
    assert len(kept) == 1  # the first CA's records are kept, not deleted


def test_list_expiring(certs: Path) -> None:
    ca = CA.load(certs)
    soon = ca.issue("client", "CN=soon", days=5)
    r = run_cli("list", "--ca-dir", certs, "--expiring", "30d", "--json")
    assert r.returncode == 0, r.stderr
    assert [row["serial"] for row in json.loads(r.stdout)] == [
        serial_hex(soon.certificate.serial_number)
    ]
    assert "no certificates" in run_cli("list", "--ca-dir", certs, "--expiring", "1d").stdout
    bad = run_cli("list", "--ca-dir", certs, "--expiring", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --expiring 'soon' is not a")


CRL_WORKER = """
import sys
from mtlskit.pki.ca import CA
from mtlskit.pki.inventory import Inventory

ca = CA.load(sys.argv[1])
inv = Inventory.open(sys.argv[1], ca.certificate)
print(" ".join(str(inv.next_crl_number()) for _ in range(25)))
"""


def test_crl_numbers_only_go_up_across_processes(certs: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CRL_WORKER, str(certs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    numbers: list[int] = []
    for w in workers:
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
        mine = [int(n) for n in out.split()]
        assert mine == sorted(mine)  # increasing within each process
        numbers += mine
    assert sorted(numbers) == list(range(1, 76))  # no number given twice, none skipped


def test_inventory_of_a_newer_mtlskit_is_refused(certs: Path) -> None:
    conn = sqlite3.connect(certs / DB_NAME)
    try:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
        conn.commit()
    finally:
        conn.close()
    r = run_cli("list", "--ca-dir", certs)
    assert r.returncode == 1 and "made by a newer mtlskit" in r.stderr


def test_intermediate_ca_is_recorded_and_revocable_by_its_parent(tmp_path: Path) -> None:
    root, inter = tmp_path / "root", tmp_path / "inter"
    assert run_cli("ca", "create", "--dir", root, "--path-length", "1").returncode == 0
    r = run_cli("ca", "create", "--dir", inter, "--parent-dir", root, "--subject", "CN=Inter")
    assert r.returncode == 0, r.stderr
    rows = json.loads(run_cli("list", "--ca-dir", root, "--json").stdout)
    assert [(row["subject"], row["profile"]) for row in rows] == [("CN=Inter", "ca")]
    r = run_cli("revoke", inter / "ca.crt", "--ca-dir", root, "--reason", "cACompromise")
    assert r.returncode == 0, r.stderr
    rows = json.loads(run_cli("list", "--ca-dir", root, "--json").stdout)
    assert rows[0]["status"] == "revoked"
