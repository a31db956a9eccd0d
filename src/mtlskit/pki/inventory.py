"""The CA's inventory: every certificate it signed, in the CA's database.

::

    inv = Inventory.open("certs", ca_cert)                    # certs/ca.db (SQLite)
    inv = Inventory.open("certs", ca_cert, db="postgresql://ca@db/ca")
    inv.records(); inv.revoke("1f3a…", "keyCompromise"); inv.next_crl_number()

    meta  (key, value): ca_id, ca_subject, crl_number, schema
    certs (serial UNIQUE, subject, sans, profile, not_before, not_after,
           status valid|revoked, revoked_at, reason, pem, issued_at,
           renewed_from, source issued|adopted)

A renewal marks the certificate it renews: status ``valid`` (not revoked, in no CRL:
it may serve until the new one is rolled out) with reason ``superseded``, RFC 5280's
word for it; ``list`` shows it as superseded and ``--expiring`` leaves it out.

The tables are those of :mod:`mtlskit.database` (SQLite by default, PostgreSQL
for several CA replicas), which also holds the CA service's state.

Why a database and not openssl's ``ca.srl``: a serial file is read, incremented
and written back without a lock, so two processes can hand out the same serial.
Here every issuance inserts its random serial (``x509.random_serial_number()``,
159 bits) under a ``UNIQUE`` constraint and, in the (astronomically unlikely)
case of a collision, signs again with a fresh serial. The certificate is handed
out only once its row is committed, so nothing issued is ever missing from the
inventory.

The database belongs to one CA: ``meta.ca_id`` is the SHA-256 of the CA's
public key, and a database of another CA is refused. ``mtlskit init`` and
:meth:`CA.save <mtlskit.pki.ca.CA.save>` create ``ca.db``; a CA folder made by
openssl gets one on its first issuance (or ``mtlskit list --adopt``), adopting
the certificates in the folder that the CA signed and the revocations of its
``ca.crl``. A PostgreSQL database is claimed the same way the first time the
CA opens it (an empty one, or one whose schema has no CA yet). A ``ca.db``
made by an older mtlskit is migrated in place when it is opened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlskit.database import (
    SCHEMA_VERSION,
    Database,
    Transaction,
    UnusableDatabaseError,
    open_database,
)
from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki.crl import check_crl, read_crl
from mtlskit.pki.keys import public_key_der
from mtlskit.pki.load import load_certificates
from mtlskit.pki.names import authority_key_id, key_id, names_apart, san_strings

__all__ = [
    "DB_NAME",
    "SUPERSEDED",
    "Inventory",
    "Record",
    "ca_id",
    "check_inventory_free",
    "check_issued_by",
    "create_inventory",
    "format_time",
    "issued_by",
    "parse_serial",
    "parse_time",
    "profile_of",
    "random_serial",
    "serial_hex",
]

DB_NAME = "ca.db"
SUPERSEDED = "superseded"  # RFC 5280 5.3.1's reason, on a renewed (not revoked) certificate
SERIAL_ATTEMPTS = 5
MIN_PREFIX = 6

# Where serials come from (RFC 5280 allows 20 octets; cryptography's helper gives
# 159 random bits). A module-level name, so a test can force a collision.
random_serial: Callable[[], int] = x509.random_serial_number


# -- small helpers ---------------------------------------------------------------------------


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


def parse_time(text: str) -> dt.datetime:
    """The inverse of :func:`format_time` (UTC). ``fromisoformat``, not ``strptime``:
    50 times faster (0.5 against 26 us, measured), and the CA service reads several
    times a request. Anything but what format_time writes is a ValueError."""
    when = dt.datetime.fromisoformat(text)
    if len(text) != 20 or when.tzinfo is None or when.utcoffset():
        raise ValueError(f"not a time as mtlskit stores it (YYYY-MM-DDTHH:MM:SSZ): {text!r}")
    return when


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


def check_issued_by(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    file: str | os.PathLike[str] | None = None,
    hint: str,
) -> None:
    """Refuse ``cert`` unless ``ca_cert`` issued it, naming both CAs (with their keys
    when they have the same name: two CAs made alike are told apart)."""
    if issued_by(cert, ca_cert):
        return
    issuer, ca = names_apart(cert.issuer, authority_key_id(cert), ca_cert.subject, key_id(ca_cert))
    raise PKIError(
        f"certificate was not issued by this CA (issuer {issuer}, CA is {ca})", file=file, hint=hint
    )


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
    def from_row(cls, row: Mapping[str, Any]) -> Record:
        return cls(
            serial=row["serial"],
            subject=row["subject"],
            sans=tuple(json.loads(row["sans"])),
            profile=row["profile"],
            not_before=parse_time(row["not_before"]),
            not_after=parse_time(row["not_after"]),
            status=row["status"],
            revoked_at=parse_time(row["revoked_at"]) if row["revoked_at"] else None,
            reason=row["reason"],
            pem=row["pem"],
            issued_at=parse_time(row["issued_at"]),
            renewed_from=row["renewed_from"],
            source=row["source"],
        )

    @property
    def superseded(self) -> bool:
        """Renewed: a newer certificate replaces this one, which is still valid (not
        revoked, in no CRL) and carries RFC 5280's reason ``superseded`` as a mark."""
        return self.status == "valid" and self.reason == SUPERSEDED

    @property
    def shown_status(self) -> str:
        """``valid``, ``superseded`` or ``revoked``: what ``mtlskit list`` shows."""
        return "superseded" if self.superseded else self.status

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
            "status": self.shown_status,
            "revoked_at": format_time(self.revoked_at) if self.revoked_at else None,
            "reason": self.reason,
            "issued_at": format_time(self.issued_at),
            "renewed_from": self.renewed_from,
            "source": self.source,
        }


def _row_values(
    cert: x509.Certificate, *, source: str, renewed_from: str | None
) -> tuple[object, ...]:
    return (
        serial_hex(cert.serial_number),
        cert.subject.rfc4514_string(),
        json.dumps(san_strings(cert)),
        profile_of(cert),
        format_time(cert.not_valid_before_utc),
        format_time(cert.not_valid_after_utc),
        _pem(cert),
        format_time(_now()),
        renewed_from,
        source,
    )


_INSERT = """
INSERT INTO certs (serial, subject, sans, profile, not_before, not_after, pem, issued_at,
                   renewed_from, source)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_NEW = _INSERT.rstrip() + " ON CONFLICT (serial) DO NOTHING"


# -- the database ----------------------------------------------------------------------------


def _not_inventory(where: str, exc: Exception | None = None) -> PKIError:
    # The driver's words ("file is not a database"), not our wrapper's.
    detail = f": {exc.__cause__ or exc}" if exc else ""
    return PKIError(
        f"not an mtlskit inventory{detail}",
        file=where,
        hint="move it away; mtlskit list --adopt makes a new one",
    )


def _read_meta(tx: Transaction) -> dict[str, str]:
    return {r["key"]: r["value"] for r in tx.all("SELECT key, value FROM meta")}


@dataclass(frozen=True)
class _Revoked:
    serial: str
    at: str
    reason: str | None


@dataclass(frozen=True)
class _Adoption:
    """What a new inventory starts with: the folder's certificates and its ca.crl."""

    certs: list[x509.Certificate]
    revoked: list[_Revoked]
    crl_number: int


class Inventory:
    """The inventory of one CA in its :class:`~mtlskit.database.Database`.

    Nothing is read until first use (:meth:`check`, or any other method); then the
    database is checked to be this CA's, and migrated when an older mtlskit made
    it. ``folder`` is the CA folder a new inventory adopts.
    """

    def __init__(
        self, database: Database, ca_cert: x509.Certificate, *, folder: Path | None = None
    ) -> None:
        self.database = database
        self.ca_cert = ca_cert
        self.folder = folder
        self._ready = False

    @property
    def location(self) -> str:
        """Where the inventory is, fit for messages (a URL without its password)."""
        return self.database.name

    def close(self) -> None:
        self.database.close()

    def exists(self) -> bool:
        """False only for a SQLite file not made yet (a server's database always exists)."""
        return self.database.dialect != "sqlite" or Path(self.database.location).exists()

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def at(
        cls,
        folder: str | os.PathLike[str],
        ca_cert: x509.Certificate,
        *,
        db: str | os.PathLike[str] | None = None,
    ) -> Inventory:
        """The inventory of the CA in ``folder``, in ``db`` (a ``postgresql://`` URL or a
        SQLite path; default ``folder/ca.db``), not opened yet."""
        location = db if db is not None else Path(folder) / DB_NAME
        return cls(open_database(location), ca_cert, folder=Path(folder))

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike[str],
        ca_cert: x509.Certificate,
        *,
        db: str | os.PathLike[str] | None = None,
    ) -> Inventory:
        """The inventory of the CA in ``folder``; refuse a missing one or another CA's."""
        inv = cls.at(folder, ca_cert, db=db)
        inv.check()
        return inv

    def check(self) -> None:
        """Make sure the database is this CA's inventory, at this mtlskit's schema.

        A SQLite file that does not exist is refused (:meth:`sign_and_record`
        creates it); a database with no CA yet is claimed for this one.
        """
        self._prepare(create=False)

    def _is_default(self) -> bool:
        return self.folder is not None and self.location == str(self.folder / DB_NAME)

    def _prepare(self, *, create: bool) -> None:
        if self._ready:
            return
        db = self.database
        if not self.exists():
            if not create:
                if self._is_default():
                    raise PKIError(
                        "CA folder has no inventory",
                        file=self.location,
                        hint=f"create it from the certificates in the folder with "
                        f"mtlskit list --ca-dir {shlex.quote(str(self.folder))} --adopt",
                    )
                raise PKIError(
                    "inventory not found",
                    file=self.location,
                    hint="check --db, or create it with mtlskit list --db PATH --adopt",
                )
            self._claim()
        else:
            try:
                with db.transaction() as tx:
                    version = db.schema_version(tx)
                    meta = _read_meta(tx) if version else {}
                    empty = version == 0 and _no_tables(tx)
            except UnusableDatabaseError as exc:
                raise _not_inventory(self.location, exc) from exc
            if "ca_id" in meta:
                self._check_meta(meta, version)
                if version < SCHEMA_VERSION:
                    db.migrate()  # an inventory of an older mtlskit, migrated in place
            elif version or empty or db.dialect == "postgresql":
                self._claim()  # our schema (or none yet) and no CA: this one takes it
            else:
                raise _not_inventory(self.location)  # another program's SQLite file
        self._ready = True

    def _check_meta(self, meta: dict[str, str], version: int) -> None:
        if version > SCHEMA_VERSION:
            raise PKIError(
                f"inventory was made by a newer mtlskit (schema {version}, this one "
                f"reads {SCHEMA_VERSION})",
                file=self.location,
                hint="upgrade mtlskit",
            )
        mine = ca_id(self.ca_cert)
        if meta["ca_id"] != mine:
            theirs = _describe_ca(meta.get("ca_subject", ""), meta["ca_id"])
            this = _describe_ca(self.ca_cert.subject.rfc4514_string(), mine)
            raise PKIError(
                f"inventory belongs to another CA ({theirs}; this CA is {this})",
                file=self.location,
                hint="use --ca-dir of the CA that owns it, or move it away",
            )

    def _claim(self) -> None:
        """Create the schema and make it this CA's, adopting the folder.

        Several processes may do this at once: the migration lock queues them, the
        first one's ``meta`` wins, and everyone checks it afterwards.
        """
        # Read everything first: a bad ca.crl leaves no half-made database behind.
        adoption = _read_adoption(self.folder, self.ca_cert) if self.folder else None
        mine = ca_id(self.ca_cert)

        def claim(tx: Transaction) -> None:
            for key, value in (
                ("ca_id", mine),
                ("ca_subject", self.ca_cert.subject.rfc4514_string()),
                ("crl_number", str(adoption.crl_number if adoption else 0)),
            ):
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
            if adoption is not None and _read_meta(tx)["ca_id"] == mine:
                _adopt(tx, adoption)

        try:
            self.database.migrate(then=claim)
        except UnusableDatabaseError as exc:
            raise _not_inventory(self.location, exc) from exc
        with self.database.transaction() as tx:
            meta = _read_meta(tx)
            version = self.database.schema_version(tx)
        self._check_meta(meta, version)

    # -- writing ---------------------------------------------------------------------------

    def sign_and_record(
        self,
        sign: Callable[[int], x509.Certificate],
        *,
        renewed_from: str | None = None,
        new_serial: Callable[[], int] | None = None,
        tx: Transaction | None = None,
    ) -> x509.Certificate:
        """``sign(serial)`` with fresh serials until one is new, and commit its row.

        Within ``tx`` when given: the row is then committed with the caller's other
        writes (a token spent, an ACME order made valid), or not at all. A CA folder
        without a ``ca.db`` gets one here, adopting the folder.
        """
        if tx is None:
            self._prepare(create=True)
        elif not self._ready:
            raise PKIError("the inventory must be opened before issuing in a transaction")
        elif not tx.durable:
            # Nothing issued may be lost with a power cut: its record is on disk first.
            raise PKIError("a certificate is recorded only in a durable transaction")
        fresh = new_serial or random_serial
        for _ in range(SERIAL_ATTEMPTS):
            # Without a transaction, sign outside one: the write lock is held only for
            # the insert.
            cert = sign(fresh())
            row = _row_values(cert, source="issued", renewed_from=renewed_from)
            # ON CONFLICT DO NOTHING: a serial collision (another process, or a past one,
            # has it) inserts nothing, and the transaction goes on (PostgreSQL would
            # abort it on a UNIQUE violation).
            if tx is None:
                with self.database.transaction() as own:
                    added = _record(own, row, renewed_from)
            else:
                added = _record(tx, row, renewed_from)
            if added == 1:
                return cert
        raise PKIError(
            f"no unused serial after {SERIAL_ATTEMPTS} attempts",
            file=self.location,
            hint="the serial source is broken; check the system's random number generator",
        )

    def revoke(self, serial: str, reason: str | None) -> Record:
        """Mark ``serial`` revoked now; refuse an unknown or already revoked one."""
        self.check()
        with self.database.transaction() as tx:
            rec = self._get(tx, serial)
            # Conditional: of two revocations at once, one changes the row.
            changed = tx.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? "
                "WHERE serial = ? AND status = 'valid'",
                (format_time(_now()), reason, rec.serial),
            )
            if changed:
                return self._get(tx, rec.serial)
        rec = self.get(rec.serial)
        when = format_time(rec.revoked_at) if rec.revoked_at else "?"
        raise PKIError(
            f"certificate {rec.serial} ({rec.subject}) is already revoked since {when}"
            + (f" ({rec.reason})" if rec.reason else ""),
            file=self.location,
            hint="nothing to do; mtlskit crl publishes the revocation",
        )

    def next_crl_number(self) -> int:
        """The next CRL number: strictly increasing, also across processes and replicas."""
        self.check()
        with self.database.transaction() as tx:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('crl_number', '0') "
                "ON CONFLICT (key) DO NOTHING"
            )
            # One UPDATE: PostgreSQL locks the row, so a concurrent one adds to our value.
            tx.execute(
                "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) "
                "WHERE key = 'crl_number'"
            )
            row = tx.one("SELECT value FROM meta WHERE key = 'crl_number'")
        assert row is not None
        return int(row["value"])

    # -- reading ---------------------------------------------------------------------------

    def _get(self, tx: Transaction, serial: str) -> Record:
        row = tx.one("SELECT * FROM certs WHERE serial = ?", (serial,))
        if row is None and len(serial) >= MIN_PREFIX:
            rows = tx.all("SELECT * FROM certs WHERE serial LIKE ? LIMIT 2", (serial + "%",))
            if len(rows) > 1:
                raise ConfigError(
                    f"serial prefix {serial} matches several certificates",
                    hint="give more digits (mtlskit list shows them)",
                )
            row = rows[0] if rows else None
        if row is None:
            raise PKIError(
                f"no certificate with serial {serial} in the inventory",
                file=self.location,
                hint="this CA never issued it: check --ca-dir, or see mtlskit list",
            )
        return Record.from_row(row)

    @contextlib.contextmanager
    def _reading(self, tx: Transaction | None) -> Iterator[Transaction]:
        """``tx`` when the caller has one open, else a transaction of our own."""
        if tx is not None:
            yield tx
            return
        self.check()
        with self.database.transaction() as own:
            yield own

    def get(self, serial: str, *, tx: Transaction | None = None) -> Record:
        """The record with ``serial`` (or a unique prefix of at least 6 hex digits)."""
        with self._reading(tx) as reader:
            return self._get(reader, serial)

    def find(self, cert: x509.Certificate, *, tx: Transaction | None = None) -> Record | None:
        """The record of ``cert``, when this CA issued it."""
        with self._reading(tx) as reader:
            row = reader.one(
                "SELECT * FROM certs WHERE serial = ?", (serial_hex(cert.serial_number),)
            )
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
            # A superseded certificate has been renewed: its expiry needs nothing done.
            query += (
                " WHERE status = 'valid' AND not_after <= ? AND (reason IS NULL OR reason <> ?)"
            )
            args = (format_time(_now() + expiring_within), SUPERSEDED)
        self.check()
        with self.database.transaction() as tx:
            rows = tx.all(query + " ORDER BY not_after, serial", args)
        return [Record.from_row(r) for r in rows]

    def revoked(self) -> list[Record]:
        self.check()
        with self.database.transaction() as tx:
            rows = tx.all(
                "SELECT * FROM certs WHERE status = 'revoked' ORDER BY revoked_at, serial"
            )
        return [Record.from_row(r) for r in rows]

    def count(self) -> int:
        self.check()
        with self.database.transaction() as tx:
            row = tx.one("SELECT count(*) AS n FROM certs")
        return int(row["n"]) if row else 0


def _record(tx: Transaction, row: tuple[object, ...], renewed_from: str | None) -> int:
    """Insert a new certificate's row unless its serial is taken (the rows added: 0 or 1);
    mark the one it renews superseded: still valid (not revoked, in no CRL: it may serve
    until the new one is rolled out), with RFC 5280's word for it, out of ``--expiring``."""
    added = tx.execute(_INSERT_NEW, row)
    if added == 1 and renewed_from is not None:
        tx.execute(
            "UPDATE certs SET reason = ? WHERE serial = ? AND status = 'valid'",
            (SUPERSEDED, renewed_from),
        )
    return added


def _no_tables(tx: Transaction) -> bool:
    """A SQLite file with no tables at all (just created): free to claim."""
    if tx.dialect != "sqlite":
        return False
    row = tx.one("SELECT count(*) AS n FROM sqlite_master")
    return row is not None and int(row["n"]) == 0


# -- creation and adoption -------------------------------------------------------------------


def _adopt(tx: Transaction, adoption: _Adoption) -> None:
    for cert in adoption.certs:
        tx.execute(
            _INSERT_NEW,
            _row_values(cert, source="adopted", renewed_from=None),
        )
    for item in adoption.revoked:
        if tx.one("SELECT 1 AS one FROM certs WHERE serial = ?", (item.serial,)) is None:
            # Known only from the CRL: keep it so the next CRL still lists it.
            tx.execute(
                "INSERT INTO certs (serial, subject, profile, not_before, not_after, "
                "issued_at, source) VALUES (?, '', 'unknown', ?, ?, ?, 'adopted')",
                (item.serial, item.at, "9999-12-31T23:59:59Z", item.at),
            )
        tx.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = ?, reason = ? WHERE serial = ?",
            (item.at, item.reason, item.serial),
        )


def _folder_certificates(folder: Path, ca_cert: x509.Certificate) -> list[x509.Certificate]:
    """The leaf certificates in ``folder`` (not below) that this CA signed."""
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


def _read_adoption(folder: Path, ca_cert: x509.Certificate) -> _Adoption:
    if not folder.is_dir():
        return _Adoption([], [], 0)
    revoked, number = _crl_revocations(folder, ca_cert)
    return _Adoption(_folder_certificates(folder, ca_cert), revoked, number)


def _move_aside(path: Path) -> Path:
    """Keep a replaced inventory (it holds revocations) as ``ca.db.<ca_id>.old``."""
    ident = "unknown"
    db = open_database(path)
    with contextlib.suppress(Exception), db.transaction() as tx:
        ident = _read_meta(tx).get("ca_id", "unknown")[:16]
    db.close()  # the last connection to close folds the WAL into the file
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
    inv = Inventory.at(folder, ca_cert)
    try:
        inv.check()
    finally:
        inv.close()


def create_inventory(
    folder: str | os.PathLike[str],
    ca_cert: x509.Certificate,
    *,
    db: str | os.PathLike[str] | None = None,
    replace: bool = False,
    adopt: bool = True,
) -> Inventory:
    """Create (or open) the inventory of ``ca_cert`` for the CA in ``folder``.

    ``adopt`` records the certificates in the folder that the CA signed and the
    revocations of its ``ca.crl``. ``replace`` moves another CA's ``ca.db`` aside
    (``ca.db.<id>.old``) instead of refusing it.
    """
    folder = Path(folder)
    inv = Inventory.at(folder, ca_cert, db=db)
    if not adopt:
        inv.folder = None  # nothing to adopt from
    if inv.database.dialect == "sqlite" and Path(inv.database.location).exists():
        try:
            inv.check()
        except PKIError:
            if not replace:
                inv.close()
                raise
            inv.close()
            _move_aside(Path(inv.database.location))
            inv = Inventory.at(folder, ca_cert, db=db)
            if not adopt:
                inv.folder = None
    inv._prepare(create=True)
    inv.folder = folder
    return inv
