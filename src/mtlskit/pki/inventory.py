"""The CA's inventory: every certificate it signed, in SQLite next to ``ca.key``.

::

    certs/ca.db    meta  (key, value): ca_id, ca_subject, crl_number, schema
                   certs (serial UNIQUE, subject, sans, profile, not_before,
                          not_after, status valid|revoked, revoked_at, reason,
                          pem, issued_at, renewed_from, source issued|adopted)

Why SQLite and not openssl's ``ca.srl``: a serial file is read, incremented and
written back without a lock, so two processes can hand out the same serial.
Here every issuance takes the write lock (``BEGIN IMMEDIATE``, WAL journal,
``busy_timeout``), inserts its random 127-bit serial under a ``UNIQUE``
constraint and, in the (astronomically unlikely) case of a collision, signs
again with a fresh serial. The certificate is handed out only once its row is
committed, so nothing issued is ever missing from the inventory.

The database belongs to one CA: ``meta.ca_id`` is the SHA-256 of the CA's
public key, and a ``ca.db`` of another CA is refused. ``mtlskit init`` and
:meth:`CA.save <mtlskit.pki.ca.CA.save>` create it; a CA folder made by openssl
gets one on its first issuance (or ``mtlskit list --adopt``), adopting the
certificates in the folder that the CA signed and the revocations of its
``ca.crl``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki.ca import random_serial
from mtlskit.pki.keys import public_key_der
from mtlskit.pki.names import san_strings

__all__ = [
    "DB_NAME",
    "Inventory",
    "Record",
    "ca_id",
    "check_inventory_free",
    "create_inventory",
    "format_time",
    "issued_by",
    "parse_serial",
    "profile_of",
    "record_issuance",
    "serial_hex",
]

DB_NAME = "ca.db"
SCHEMA = 1
BUSY_TIMEOUT_MS = 30_000
SERIAL_ATTEMPTS = 5
MIN_PREFIX = 6

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
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
CREATE INDEX IF NOT EXISTS certs_not_after ON certs (not_after);
"""


# -- small helpers ---------------------------------------------------------------------------


def _known_schema() -> int:
    from mtlskit.database import SCHEMA_VERSION

    return max(SCHEMA, SCHEMA_VERSION)


def serial_hex(serial: int) -> str:
    """A serial as the inventory stores it: lowercase hex, no colons."""
    return format(serial, "x")


def parse_serial(text: str) -> str:
    """``0x1A``, ``1a:2b``, ``1A2B`` (openssl's form) → ``1a2b``; refuse anything else."""
    value = text.strip().lower().replace(":", "")
    value = value.removeprefix("0x")
    try:
        return serial_hex(int(value, 16))
    except ValueError:
        raise ConfigError(
            f"{text!r} is neither a certificate file nor a hex serial",
            hint="give a serial as mtlskit list shows it, or the path of the certificate",
        ) from None


def format_time(when: dt.datetime) -> str:
    """UTC, second precision, sortable as text: ``2026-11-27T07:30:00Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def ca_id(ca_cert: x509.Certificate) -> str:
    """The SHA-256 of the CA's public key: the same for a CA certificate re-signed with it."""
    return hashlib.sha256(public_key_der(ca_cert.public_key())).hexdigest()  # type: ignore[arg-type]


def _describe_ca(subject: str, ident: str) -> str:
    return f"{subject or '?'}, key {ident[:16]}"


def profile_of(cert: x509.Certificate) -> str:
    """The profile a certificate was made with, from its extendedKeyUsage.

    A certificate without one (openssl's defaults, the seed's v1 client) can
    be used for anything: it counts as ``server-client`` when it has SANs, and
    as ``client`` otherwise, so that a renewal keeps it usable as before.
    """
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca"  # an intermediate this CA signed
    except x509.ExtensionNotFound:
        pass
    try:
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return "server-client" if san_strings(cert) else "client"
    server = ExtendedKeyUsageOID.SERVER_AUTH in ekus
    client = ExtendedKeyUsageOID.CLIENT_AUTH in ekus
    if server and client:
        return "server-client"
    return "server" if server else "client"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """True when ``ca_cert``'s key signed ``cert`` (and the issuer name matches)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One row of the inventory."""

    serial: str
    subject: str
    sans: tuple[str, ...]
    profile: str
    not_before: dt.datetime
    not_after: dt.datetime
    status: str
    revoked_at: dt.datetime | None
    reason: str | None
    pem: str | None
    issued_at: dt.datetime
    renewed_from: str | None
    source: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Record:
        return cls(
            serial=row["serial"],
            subject=row["subject"],
            sans=tuple(json.loads(row["sans"])),
            profile=row["profile"],
            not_before=_parse_time(row["not_before"]),
            not_after=_parse_time(row["not_after"]),
            status=row["status"],
            revoked_at=_parse_time(row["revoked_at"]) if row["revoked_at"] else None,
            reason=row["reason"],
            pem=row["pem"],
            issued_at=_parse_time(row["issued_at"]),
            renewed_from=row["renewed_from"],
            source=row["source"],
        )

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)

    @property
    def certificate(self) -> x509.Certificate:
        if self.pem is None:
            raise PKIError(
                f"the inventory has no copy of certificate {self.serial}",
                hint="it was only known from a CRL; pass the certificate file instead",
            )
        return x509.load_pem_x509_certificate(self.pem.encode("ascii"))

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds() / 86400

    def as_json(self, now: dt.datetime | None = None) -> dict[str, object]:
        return {
            "serial": self.serial,
            "subject": self.subject,
            "sans": list(self.sans),
            "profile": self.profile,
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
            "days_left": round(self.days_left(now), 2),
            "status": self.status,
            "revoked_at": format_time(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
            "issued_at": format_time(self.issued_at),
            "renewed_from": self.renewed_from,
            "source": self.source,
        }


def _row_values(
    cert: x509.Certificate, *, source: str, renewed_from: str | None
) -> dict[str, object]:
    return {
        "serial": serial_hex(cert.serial_number),
        "subject": cert.subject.rfc4514_string(),
        "sans": json.dumps(san_strings(cert)),
        "profile": profile_of(cert),
        "not_before": format_time(cert.not_valid_before_utc),
        "not_after": format_time(cert.not_valid_after_utc),
        "pem": _pem(cert),
        "issued_at": format_time(_now()),
        "renewed_from": renewed_from,
        "source": source,
    }


_INSERT = """
INSERT INTO certs (serial, subject, sans, profile, not_before, not_after, pem, issued_at,
                   renewed_from, source)
VALUES (:serial, :subject, :sans, :profile, :not_before, :not_after, :pem, :issued_at,
        :renewed_from, :source)
"""


# -- the database ----------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock
    # up front, so two writers queue on busy_timeout instead of deadlocking on upgrade).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _not_inventory(path: Path, exc: Exception | None = None) -> PKIError:
    detail = f": {exc}" if exc else ""
    return PKIError(
        f"not an mtlskit inventory{detail}",
        file=path,
        hint="move it away; mtlskit list --adopt makes a new one",
    )


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, str]:
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as exc:
        raise _not_inventory(path, exc) from exc
    return {r["key"]: r["value"] for r in rows}


class Inventory:
    """The inventory of one CA; every method opens and closes its own connection."""

    def __init__(self, path: Path, ca_cert: x509.Certificate) -> None:
        self.path = path
        self.ca_cert = ca_cert

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | os.PathLike[str], ca_cert: x509.Certificate) -> Inventory:
        """The inventory of the CA in ``folder``; refuse a missing one or another CA's."""
        path = Path(folder) / DB_NAME
        if not path.is_file():
            raise PKIError(
                "CA folder has no inventory",
                file=path,
                hint=f"create it from the certificates in the folder with "
                f"mtlskit list --ca-dir {folder} --adopt",
            )
        inv = cls(path, ca_cert)
        inv._check_owner()
        return inv

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise _not_inventory(self.path, exc) from exc
        try:
            yield conn
        finally:
            conn.close()

    def _check_owner(self) -> None:
        with self._conn() as conn:
            meta = _read_meta(conn, self.path)
        if "ca_id" not in meta:
            raise _not_inventory(self.path)
        # The CA service migrates ca.db further (mtlskit.database): a schema this build
        # knows is fine, its certs table is the same.
        if int(meta.get("schema", "1")) > _known_schema():
            raise PKIError(
                f"inventory was made by a newer mtlskit (schema {meta['schema']}, this one "
                f"reads {SCHEMA})",
                file=self.path,
                hint="upgrade mtlskit",
            )
        if meta["ca_id"] != ca_id(self.ca_cert):
            raise PKIError(
                f"inventory belongs to another CA ({_describe_ca(meta.get('ca_subject', ''), meta['ca_id'])}; "
                f"this CA is {_describe_ca(self.ca_cert.subject.rfc4514_string(), ca_id(self.ca_cert))})",
                file=self.path,
                hint="use --ca-dir of the CA that owns it, or move it away",
            )

    # -- writing ---------------------------------------------------------------------------

    def sign_and_record(
        self,
        sign: Callable[[int], x509.Certificate],
        *,
        renewed_from: str | None = None,
        new_serial: Callable[[], int] | None = None,
    ) -> x509.Certificate:
        """``sign(serial)`` with fresh serials until one is new, and commit its row."""
        fresh = new_serial or random_serial
        with self._conn() as conn:
            for _ in range(SERIAL_ATTEMPTS):
                # Sign outside the transaction: the write lock is held only for the insert.
                cert = sign(fresh())
                values = _row_values(cert, source="issued", renewed_from=renewed_from)
                try:
                    with _write(conn):
                        conn.execute(_INSERT, values)
                except sqlite3.IntegrityError:
                    continue  # serial collision: another process (or a past one) has it
                except sqlite3.OperationalError as exc:
                    raise PKIError(
                        f"cannot record the certificate in the inventory: {exc}",
                        file=self.path,
                        hint="check the folder's permissions and free space",
                    ) from exc
                return cert
        raise PKIError(
            f"no unused serial after {SERIAL_ATTEMPTS} attempts",
            file=self.path,
            hint="the serial source is broken; check the system's random number generator",
        )

    def _adopt(
        self, conn: sqlite3.Connection, certs: list[x509.Certificate], revoked: list[_Revoked]
    ) -> None:
        for cert in certs:
            conn.execute(
                _INSERT.replace("INSERT", "INSERT OR IGNORE", 1),
                _row_values(cert, source="adopted", renewed_from=None),
            )
        for item in revoked:
            row = conn.execute("SELECT 1 FROM certs WHERE serial = ?", (item.serial,)).fetchone()
            if row is None:
                # Known only from the CRL: keep it so the next CRL still lists it.
                conn.execute(
                    "INSERT INTO certs (serial, subject, profile, not_before, not_after, "
                    "issued_at, source) VALUES (?, '', 'unknown', ?, ?, ?, 'adopted')",
                    (item.serial, item.at, "9999-12-31T23:59:59Z", item.at),
                )
            conn.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? WHERE serial = ?",
                (item.at, item.reason, item.serial),
            )

    def revoke(self, serial: str, reason: str | None) -> Record:
        """Mark ``serial`` revoked now; refuse an unknown or already revoked one."""
        with self._conn() as conn, _write(conn):
            rec = self._get(conn, serial)
            if rec.status == "revoked":
                when = format_time(rec.revoked_at) if rec.revoked_at else "?"
                raise PKIError(
                    f"certificate {rec.serial} ({rec.subject}) is already revoked since {when}"
                    + (f" ({rec.reason})" if rec.reason else ""),
                    file=self.path,
                    hint="nothing to do; mtlskit crl publishes the revocation",
                )
            conn.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? WHERE serial = ?",
                (format_time(_now()), reason, rec.serial),
            )
            return self._get(conn, rec.serial)

    def mark_renewal(self, new_serial: str, old_serial: str) -> None:
        """Note that ``new_serial`` renews ``old_serial`` (``mtlskit list`` shows it)."""
        with self._conn() as conn, _write(conn):
            conn.execute(
                "UPDATE certs SET renewed_from = ? WHERE serial = ?", (old_serial, new_serial)
            )

    def next_crl_number(self) -> int:
        """The next CRL number: strictly increasing, also across processes."""
        with self._conn() as conn, _write(conn):
            row = conn.execute("SELECT value FROM meta WHERE key = 'crl_number'").fetchone()
            number = (int(row["value"]) if row else 0) + 1
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('crl_number', ?)", (str(number),)
            )
        return number

    # -- reading ---------------------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, serial: str) -> Record:
        row = conn.execute("SELECT * FROM certs WHERE serial = ?", (serial,)).fetchone()
        if row is None and len(serial) >= MIN_PREFIX:
            rows = conn.execute(
                "SELECT * FROM certs WHERE serial LIKE ? LIMIT 2", (serial + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise ConfigError(
                    f"serial prefix {serial} matches several certificates",
                    hint="give more digits (mtlskit list shows them)",
                )
            row = rows[0] if rows else None
        if row is None:
            raise PKIError(
                f"no certificate with serial {serial} in the inventory",
                file=self.path,
                hint="this CA never issued it: check --ca-dir, or see mtlskit list",
            )
        return Record.from_row(row)

    def get(self, serial: str) -> Record:
        """The record with ``serial`` (or a unique prefix of at least 6 hex digits)."""
        with self._conn() as conn:
            return self._get(conn, serial)

    def find(self, cert: x509.Certificate) -> Record | None:
        """The record of ``cert``, when this CA issued it."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT * FROM certs WHERE serial = ?", (serial_hex(cert.serial_number),)
            ).fetchone()
        if row is None:
            return None
        rec = Record.from_row(row)
        # Same serial is not enough: another CA may have used it.
        if rec.pem is not None and rec.certificate != cert:
            return None
        return rec

    def records(self, *, expiring_within: dt.timedelta | None = None) -> list[Record]:
        """Every record, soonest expiry first; only valid ones expiring soon when asked."""
        query = "SELECT * FROM certs"
        args: tuple[str, ...] = ()
        if expiring_within is not None:
            query += " WHERE status = 'valid' AND not_after <= ?"
            args = (format_time(_now() + expiring_within),)
        with self._conn() as conn:
            rows = conn.execute(query + " ORDER BY not_after, serial", args).fetchall()
        return [Record.from_row(r) for r in rows]

    def revoked(self) -> list[Record]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT * FROM certs WHERE status = 'revoked' ORDER BY revoked_at, serial"
            ).fetchall()
        return [Record.from_row(r) for r in rows]

    def count(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT count(*) FROM certs").fetchone()[0])


# -- creation and adoption -------------------------------------------------------------------


@dataclass(frozen=True)
class _Revoked:
    serial: str
    at: str
    reason: str | None


def _folder_certificates(folder: Path, ca_cert: x509.Certificate) -> list[x509.Certificate]:
    """The leaf certificates in ``folder`` (not below) that this CA signed."""
    from mtlskit.pki.load import load_certificates

    out: list[x509.Certificate] = []
    for path in sorted([*folder.glob("*.crt"), *folder.glob("*.pem")]):
        try:
            certs = load_certificates(path.read_bytes(), file=path)
        except (PKIError, OSError):
            continue  # keys, CSRs and other files: not ours to judge here
        for cert in certs:
            if cert != ca_cert and issued_by(cert, ca_cert) and cert not in out:
                out.append(cert)
    return out


def _crl_revocations(folder: Path, ca_cert: x509.Certificate) -> tuple[list[_Revoked], int]:
    """The revocations and number of ``folder/ca.crl``, refused if another key signed it."""
    from mtlskit.pki.crl import check_crl, read_crl

    path = folder / "ca.crl"
    if not path.exists():
        return [], 0
    crl = read_crl(path)
    check_crl(crl, [ca_cert], file=path, check_time=False)
    out = []
    for entry in crl:
        reason: str | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        out.append(
            _Revoked(
                serial_hex(entry.serial_number), format_time(entry.revocation_date_utc), reason
            )
        )
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return out, number


def _move_aside(path: Path) -> Path:
    """Keep a replaced inventory (it holds revocations) as ``ca.db.<ca_id>.old``."""
    ident = "unknown"
    with contextlib.suppress(sqlite3.DatabaseError, PKIError):
        conn = _connect(path)
        try:
            ident = _read_meta(conn, path).get("ca_id", "unknown")[:16]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    target = path.with_name(f"{path.name}.{ident}.old")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    return target


def check_inventory_free(
    folder: str | os.PathLike[str], ca_cert: x509.Certificate, *, replace: bool = False
) -> None:
    """Before writing a CA into ``folder``: refuse when its ca.db belongs to another CA."""
    path = Path(folder) / DB_NAME
    if replace or not path.exists():
        return
    if (Path(folder) / "ca.key").exists() or (Path(folder) / "ca.crt").exists():
        return  # writing refuses to overwrite them first, with its own error
    Inventory(path, ca_cert)._check_owner()


def create_inventory(
    folder: str | os.PathLike[str],
    ca_cert: x509.Certificate,
    *,
    replace: bool = False,
    adopt: bool = True,
) -> Inventory:
    """Create (or open) the inventory of ``ca_cert`` in ``folder``.

    ``adopt`` records the certificates in the folder that the CA signed and the
    revocations of its ``ca.crl``. ``replace`` moves another CA's inventory aside
    (``ca.db.<id>.old``) instead of refusing it.
    """
    folder = Path(folder)
    path = folder / DB_NAME
    if path.exists():
        try:
            return Inventory.open(folder, ca_cert)
        except PKIError:
            if not replace:
                raise
            _move_aside(path)
    # Read everything first: a bad ca.crl leaves no half-made ca.db behind.
    certs = _folder_certificates(folder, ca_cert) if adopt else []
    revoked, number = _crl_revocations(folder, ca_cert) if adopt else ([], 0)
    try:
        conn = _connect(path)
    except sqlite3.DatabaseError as exc:
        raise _not_inventory(path, exc) from exc
    except sqlite3.OperationalError as exc:
        raise PKIError(f"cannot create inventory: {exc}", file=path) from exc
    inv = Inventory(path, ca_cert)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_TABLES)
        with _write(conn):
            # Several processes may create it at once: the first one's meta wins,
            # and everyone checks it below.
            for key, value in (
                ("schema", str(SCHEMA)),
                ("ca_id", ca_id(ca_cert)),
                ("ca_subject", ca_cert.subject.rfc4514_string()),
                ("crl_number", str(number)),
            ):
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            if _read_meta(conn, path)["ca_id"] == ca_id(ca_cert):
                inv._adopt(conn, certs, revoked)
    except sqlite3.DatabaseError as exc:
        raise _not_inventory(path, exc) from exc
    finally:
        conn.close()
    inv._check_owner()
    return inv


def record_issuance(
    folder: str | os.PathLike[str],
    ca_cert: x509.Certificate,
    sign: Callable[[int], x509.Certificate],
) -> x509.Certificate:
    """The hook of :meth:`CA._sign`: sign with a serial the inventory has never seen.

    The inventory is created (adopting the folder) on the first issuance of a CA
    that has none, such as one made by the seed's openssl commands.
    """
    folder = Path(folder)
    if (folder / DB_NAME).exists():
        inv = Inventory.open(folder, ca_cert)
    else:
        inv = create_inventory(folder, ca_cert)
    return inv.sign_and_record(sign)
