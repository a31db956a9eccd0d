"""The inventory on SQLite and on a real PostgreSQL: day-two commands with --db, unique
serials under concurrency, a database that goes down and comes back, migrations."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from mtlskit.database import SCHEMA_VERSION, open_database
from mtlskit.errors import PKIError, StorageError
from mtlskit.pki import inventory as inventory_mod
from mtlskit.pki.ca import CA
from mtlskit.pki.crl import is_revoked, read_crl
from mtlskit.pki.inventory import DB_NAME, Inventory, ca_id, serial_hex
from mtlskit.pki.load import read_certificates
from mtlskit.pki.seed import init_seed
from tests.support.processes import ROOT, PostgresCluster, Result, run_cli


@dataclass
class Backend:
    dialect: str
    ca_dir: Path
    db: str | None  # None: the CA folder's ca.db

    def db_args(self) -> list[str]:
        return ["--db", self.db] if self.db else []

    def args(self) -> list[str]:
        return ["--ca-dir", str(self.ca_dir), *self.db_args()]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    folder = tmp_path / "certs"
    init_seed(folder)
    if request.param == "sqlite":
        return Backend("sqlite", folder, None)
    return Backend("postgresql", folder, request.getfixturevalue("postgres_url"))


def _json(*args: str | Path) -> object:
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _one_line_error(r: Result, start: str) -> None:
    assert r.returncode == 1, r
    assert r.stderr.startswith(start), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_day_two_commands_on_each_backend(backend: Backend) -> None:
    certs = backend.ca_dir
    assert run_cli("issue", "client", "alice", *backend.args()).returncode == 0
    assert run_cli("issue", "client", "carol", *backend.args()).returncode == 0
    rows = _json("list", *backend.args(), "--json")
    assert isinstance(rows, list)
    by_subject = {row["subject"]: row for row in rows}
    assert set(by_subject) == {
        "CN=client,O=Dev,ST=RB,C=TH",
        "CN=localhost,O=Dev,ST=RB,C=TH",
        "CN=alice",
        "CN=carol",
    }
    # The seed's certificates were adopted when the database was made (or claimed).
    assert by_subject["CN=client,O=Dev,ST=RB,C=TH"]["source"] == "adopted"
    assert by_subject["CN=alice"]["source"] == "issued"

    # The Python API the CA service uses: CA.load(..., db=) and ca.inventory.
    ca = CA.load(certs, db=backend.db)
    assert ca.inventory is not None and ca.inventory.database.dialect == backend.dialect
    leaf = ca.issue("server", "CN=api", sans=["api.internal"])
    assert ca.inventory.get(serial_hex(leaf.certificate.serial_number)).certificate == (
        leaf.certificate
    )
    if backend.dialect == "postgresql":
        # Nothing went to the folder's SQLite ca.db (which init made).
        assert Inventory.open(certs, ca.certificate).count() == 2

    r = run_cli("revoke", certs / "alice.crt", *backend.args(), "--reason", "keyCompromise")
    assert r.returncode == 0, r.stderr
    _one_line_error(run_cli("revoke", certs / "alice.crt", *backend.args()), "error: certificate")
    assert run_cli("crl", *backend.args()).returncode == 0
    crl = read_crl(certs / "ca.crl")
    alice = read_certificates(certs / "alice.crt")[0]
    entry = is_revoked(alice, crl)
    assert entry is not None
    assert run_cli("crl", *backend.args()).returncode == 0  # CRL numbers go up
    assert ca.inventory.next_crl_number() == 3

    renewed = _json("renew", certs / "server.crt", *backend.args(), "--force", "--json")
    assert isinstance(renewed, dict)
    rows = _json("list", *backend.args(), "--json")
    assert isinstance(rows, list)
    new = next(row for row in rows if row["serial"] == renewed["new_serial"])
    assert new["renewed_from"] == renewed["old_serial"]

    # Revoked in the inventory, not yet in a CRL: status says so.
    assert run_cli("revoke", certs / "carol.crt", *backend.args()).returncode == 0
    status = _json("status", certs, *backend.db_args(), "--json")
    assert isinstance(status, dict)
    items = {i["file"]: i for i in status["items"]}
    assert items["alice.crt"]["state"] == "revoked"
    assert items["carol.crt"]["state"] == "revoked"
    assert "no CRL yet" in items["carol.crt"]["note"]
    assert items["client.crt"]["state"] == "ok"


def test_db_option_with_a_sqlite_file_elsewhere(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    other = tmp_path / "elsewhere.db"
    _one_line_error(run_cli("list", "--ca-dir", certs, "--db", other), "error: inventory not found")
    assert not other.exists()
    r = run_cli("list", "--ca-dir", certs, "--db", other, "--adopt")
    assert r.returncode == 0 and "created" in r.stderr, r.stderr
    assert run_cli("issue", "client", "dave", "--ca-dir", certs, "--db", other).returncode == 0
    rows = _json("list", "--ca-dir", certs, "--db", other, "--json")
    assert isinstance(rows, list) and len(rows) == 3
    assert Inventory.open(certs, CA.load(certs).certificate).count() == 2


def test_postgresql_database_of_another_ca_is_refused(tmp_path: Path, postgres_url: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    init_seed(first)
    init_seed(second)
    CA.load(first, db=postgres_url).issue("client", "CN=one")  # claims the database
    with pytest.raises(PKIError, match="belongs to another CA"):
        CA.load(second, db=postgres_url)
    for args in (
        ["list", "--ca-dir", second],
        ["revoke", second / "client.crt", "--ca-dir", second],
        ["crl", "--ca-dir", second],
        ["renew", second / "server.crt", "--ca-dir", second, "--force"],
        ["issue", "client", "x", "--ca-dir", second],
    ):
        _one_line_error(
            run_cli(*args, "--db", postgres_url), "error: inventory belongs to another CA"
        )
    assert not (second / "x.crt").exists() and not (second / "ca.crl").exists()
    assert len(_json("list", "--ca-dir", first, "--db", postgres_url, "--json")) == 3


def test_serial_collision_is_retried_on_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    ca = CA.load(certs, db=postgres_url)
    assert ca.inventory is not None
    taken = ca.inventory.records()[0].serial_int
    fresh = iter([taken, taken, 0x4242_4242_4242_4242_4242])
    monkeypatch.setattr(inventory_mod, "random_serial", lambda: next(fresh))
    leaf = ca.issue("client", "CN=retry")
    assert leaf.certificate.serial_number == 0x4242_4242_4242_4242_4242
    assert ca.inventory.count() == 3


WORKER = """
import sys
from mtlskit.pki.ca import CA
from mtlskit.pki.keys import generate_key
from mtlskit.pki.names import parse_name

ca = CA.load(sys.argv[1], db=sys.argv[2] or None)
key = generate_key().public_key()
names = [parse_name(f"CN=w{sys.argv[3]}-{i}") for i in range(int(sys.argv[4]))]
print("ready", flush=True)
sys.stdin.readline()  # all workers start issuing at once
out = [ca.sign_public_key(key, name, profile="client").serial_number for name in names]
print("\\n".join(format(s, "x") for s in out))
"""


def _start_together(commands: list[list[str]]) -> tuple[list[subprocess.Popen[str]], float]:
    """Start processes that print "ready" and wait for a line on stdin; release them at
    once. Returns them and the time they were released."""
    procs = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for cmd in commands
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            out, err = p.communicate(timeout=30)
            pytest.fail(f"worker failed before starting: {line}{out}{err}")
    start = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs, start


@pytest.mark.slow
def test_four_processes_issue_200_distinct_serials_all_recorded(backend: Backend) -> None:
    workers, per_worker = 4, 50
    ca = CA.load(backend.ca_dir, db=backend.db)
    assert ca.inventory is not None
    before = ca.inventory.count()  # also claims an empty PostgreSQL database first
    procs, start = _start_together(
        [
            [
                sys.executable,
                "-c",
                WORKER,
                str(backend.ca_dir),
                backend.db or "",
                str(n),
                str(per_worker),
            ]
            for n in range(workers)
        ]
    )
    serials: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        serials += out.split()
    elapsed = time.monotonic() - start
    total = workers * per_worker
    assert len(serials) == total and len(set(serials)) == total
    recorded = {r.serial for r in ca.inventory.records()}
    assert len(recorded) == before + total
    assert set(serials) <= recorded
    print(
        f"{backend.dialect}: {total} issuances from {workers} processes in {elapsed:.2f} s "
        f"({total / elapsed:.0f}/s)"
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_database_down_answers_one_line_and_recovers(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    if postgres_cluster.dir is None:
        pytest.skip("MTLSKIT_TEST_POSTGRES names an outside server: not ours to stop")
    certs = tmp_path / "certs"
    init_seed(certs)
    ca = CA.load(certs, db=postgres_url)  # a long-lived CA, like the CA service's
    assert ca.inventory is not None
    ca.issue("client", "CN=before")
    count = ca.inventory.count()
    files = _snapshot(certs)
    postgres_cluster.stop()
    try:
        for args in (
            ["list", "--ca-dir", certs],
            ["revoke", certs / "client.crt", "--ca-dir", certs],
            ["crl", "--ca-dir", certs],
            ["renew", certs / "server.crt", "--ca-dir", certs, "--force"],
            ["issue", "client", "bob", "--ca-dir", certs],
            ["status", certs],
        ):
            r = run_cli(*args, "--db", postgres_url)
            _one_line_error(r, "error: database unavailable")
            assert "check that PostgreSQL is running" in r.stderr
        # Signed, but not recorded: not handed out either.
        with pytest.raises(StorageError) as caught:
            ca.issue("client", "CN=during")
        assert caught.value.unavailable
        assert _snapshot(certs) == files  # nothing half-written
    finally:
        postgres_cluster.start()
    assert ca.inventory.count() == count  # the same object reconnects by itself
    ca.issue("client", "CN=after")
    rows = _json("list", "--ca-dir", certs, "--db", postgres_url, "--json")
    assert isinstance(rows, list)
    subjects = {row["subject"] for row in rows}
    assert {"CN=before", "CN=after"} <= subjects and "CN=during" not in subjects
    assert len(rows) == count + 1


def test_newer_schema_is_refused_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    CA.load(certs, db=postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    r = run_cli("list", "--ca-dir", certs, "--db", postgres_url)
    _one_line_error(r, "error: inventory was made by a newer mtlskit (schema 99")
    with pytest.raises(StorageError, match="newer mtlskit"):
        open_database(postgres_url).migrate()


# The inventory as mtlskit made it before migrations (meta.schema = 1).
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE certs (
    serial TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    sans TEXT NOT NULL DEFAULT '[]',
    profile TEXT NOT NULL,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'revoked')),
    revoked_at TEXT,
    reason TEXT,
    pem TEXT,
    issued_at TEXT NOT NULL,
    renewed_from TEXT,
    source TEXT NOT NULL DEFAULT 'issued'
);
CREATE INDEX certs_not_after ON certs (not_after);
"""


def test_schema_1_ca_db_is_migrated_in_place(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    ca = CA.load(certs)
    server = read_certificates(certs / "server.crt")[0]
    for f in certs.glob(f"{DB_NAME}*"):
        f.unlink()
    conn = sqlite3.connect(certs / DB_NAME)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA_1)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("schema", "1"),
                ("ca_id", ca_id(ca.certificate)),
                ("ca_subject", ca.certificate.subject.rfc4514_string()),
                ("crl_number", "7"),
            ],
        )
        conn.execute(
            "INSERT INTO certs (serial, subject, sans, profile, not_before, not_after, status, "
            "revoked_at, reason, issued_at, source) VALUES (?, ?, ?, 'server', "
            "'2026-01-01T00:00:00Z', '2099-01-01T00:00:00Z', 'revoked', "
            "'2026-02-01T00:00:00Z', 'superseded', '2026-01-01T00:00:00Z', 'issued')",
            (serial_hex(server.serial_number), server.subject.rfc4514_string(), "[]"),
        )
        conn.commit()
    finally:
        conn.close()

    rows = _json("list", "--ca-dir", certs, "--json")
    assert isinstance(rows, list)
    assert [(r["serial"], r["status"], r["reason"]) for r in rows] == [
        (serial_hex(server.serial_number), "revoked", "superseded")
    ]
    assert open_database(certs / DB_NAME).schema_version() == SCHEMA_VERSION
    conn = sqlite3.connect(certs / DB_NAME)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"tokens", "acme_orders", "rate_limits"} <= tables
    # Still the same inventory: its CRL number continues, new issuances are recorded.
    assert run_cli("crl", "--ca-dir", certs).returncode == 0
    number = read_crl(certs / "ca.crl").extensions.get_extension_for_class(x509.CRLNumber)
    assert number.value.crl_number == 8
    CA.load(certs).issue("client", "CN=new")
    assert len(_json("list", "--ca-dir", certs, "--json")) == 2


CLAIMER = """
import sys
from mtlskit.errors import MtlsError
from mtlskit.pki.ca import CA

print("ready", flush=True)
sys.stdin.readline()
try:
    ca = CA.load(sys.argv[1], db=sys.argv[2])
except MtlsError as exc:
    print("refused:", exc.what)
else:
    print("ok", ca.inventory.count())
"""


def test_migrations_from_four_processes_at_once_on_an_empty_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    init_seed(first)
    init_seed(second)
    folders = [first, first, first, second]
    procs, _ = _start_together(
        [[sys.executable, "-c", CLAIMER, str(f), postgres_url] for f in folders]
    )
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(out.strip())
    winner = next(f for f, res in zip(folders, results, strict=True) if res.startswith("ok"))
    for folder, res in zip(folders, results, strict=True):
        if folder == winner:
            assert res == "ok 2", results  # the seed's two certificates, adopted once
        else:
            assert res.startswith("refused: inventory belongs to another CA"), results
    with psycopg.connect(postgres_url) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        certs = conn.execute("SELECT count(*) FROM certs").fetchone()
    assert meta["schema"] == str(SCHEMA_VERSION)
    assert meta["ca_id"] == ca_id(CA.load(winner).certificate)
    assert certs == (2,)


def test_database_messages_hide_passwords() -> None:
    assert open_database("postgresql://ca:s3cret@db.internal:5432/ca").name == (
        "postgresql://ca@db.internal:5432/ca"
    )
    assert "s3cret" not in open_database("postgresql://db/ca?password=s3cret").name


def test_garbage_in_place_of_a_database_says_so(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_seed(certs)
    shutil.copy(ROOT / "README.md", tmp_path / "junk.db")
    r = run_cli("list", "--ca-dir", certs, "--db", tmp_path / "junk.db")
    _one_line_error(r, "error: not an mtlskit inventory")
