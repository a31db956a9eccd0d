"""What every request of the CA service shares: the unlocked CA, the database, the
audit log, the metrics, and the few things kept in memory (the CRL, the root).

::

    state = ServiceState.open(config, passphrase=b"…")   # CA unlocked, DB migrated
    state.crl_der()                                       # fresh: re-made when needed
    state.check_rate("addr:127.0.0.1")                    # 429 beyond --rate-limit
    state.ensure_server_certificate()                     # the service's own TLS cert

Methods that touch the database or sign are blocking: the app calls them with
:meth:`ServiceState.blocking`, on the service's own threads, and
:class:`~mtlskit.database.Database` gives each thread its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import ipaddress
import json
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.database import Database, Transaction
from mtlskit.errors import PKIError, RefusedError
from mtlskit.pki.ca import CA, cert_pem
from mtlskit.pki.inventory import (
    Inventory,
    create_inventory,
    format_time,
    issued_by,
    parse_time,
)
from mtlskit.pki.load import read_certificates
from mtlskit.pki.renew import due_at
from mtlskit.pki.store import CERT_MODE, KEY_MODE, write_many
from mtlskit.service.config import ServiceConfig
from mtlskit.service.metrics import ServiceMetrics

__all__ = [
    "CRL_DAYS",
    "SERVICE_CERT_LIFETIME",
    "ServiceState",
    "fingerprint",
    "open_service_database",
    "root_of",
]

log = logging.getLogger("mtlskit.service")

# The service's own server certificate; renewed at 2/3 of it by the service itself.
SERVICE_CERT_LIFETIME = dt.timedelta(days=7)
# GET /crl serves a CRL valid this long, re-made once half of it has passed (or at
# the first revocation it does not list), so a client's copy never runs out.
CRL_DAYS = 7
RATE_WINDOW = 60  # seconds: --rate-limit counts requests per minute
# Each replica records that it is alive this often; one silent for REPLICA_LOST has
# stopped (killed, crashed, cut off), and the work it claimed is taken over. A live
# replica taken for gone only costs a validation done twice.
REPLICA_BEAT = 2.0  # seconds
REPLICA_LOST = dt.timedelta(seconds=10)
# A replica row silent this long is deleted (maintenance).
REPLICA_FORGET = dt.timedelta(days=1)
# Threads for the blocking work of requests (database, signing); each keeps its own
# database connection, so this also bounds the connections of one replica.
THREADS = 16

P = ParamSpec("P")
T = TypeVar("T")


def root_of(ca: CA) -> x509.Certificate:
    """The root at the top of ``ca``'s chain (``ca`` itself for a root CA)."""
    return ca.chain[-1] if ca.chain else ca.certificate


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the DER certificate, lower-case hex (what ``ca fingerprint`` prints)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def open_service_database(ca_dir: Path, db: str | None = None) -> Database:
    """The CA's database (``db``: a ``postgresql://`` URL or SQLite path; default
    CA_DIR/ca.db), made and claimed for the CA in ``ca_dir`` when it has none yet."""
    ca_cert = read_certificates(ca_dir / "ca.crt")[0]
    return create_inventory(ca_dir, ca_cert, db=db).database


def _audit_value(value: object) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


@dataclass
class _CachedCRL:
    der: bytes
    next_update: dt.datetime
    remake_at: dt.datetime
    revoked: tuple[tuple[str, str], ...]  # (serial, revoked_at) it lists


class ServiceState:
    """The shared state of one CA service process (see the module docstring)."""

    def __init__(self, config: ServiceConfig, ca: CA, db: Database) -> None:
        if ca.dir is None or ca.inventory is None:
            raise PKIError("the CA service needs a CA loaded from its folder (CA.load)")
        self.config = config
        self.ca = ca
        self.db = db
        self.audit = logging.getLogger("mtlskit.audit")
        self.metrics = ServiceMetrics()
        self.base_url = config.base_url
        self.root = root_of(ca)
        self.roots_pem = cert_pem(self.root)
        self.fingerprint = fingerprint(self.root)
        self._crl: _CachedCRL | None = None
        self._crl_lock = threading.Lock()
        # Names this process among the replicas that share the database.
        self.replica_id = secrets.token_hex(8)
        self.started_at = self.now()
        self._threads = ThreadPoolExecutor(THREADS, thread_name_prefix="ca-service")
        self.metrics.ca_not_after = ca.certificate.not_valid_after_utc.timestamp()

    @classmethod
    def open(cls, config: ServiceConfig, *, passphrase: bytes | None = None) -> ServiceState:
        """Unlock the CA, open and migrate its database; every failure is one MtlsError."""
        ca = CA.load(config.ca_dir, passphrase=passphrase, db=config.db)
        # Made (adopting the folder) when a CA folder has none yet, migrated, checked.
        loaded = ca.inventory
        ca.inventory = create_inventory(config.ca_dir, ca.certificate, db=config.db)
        if loaded is not None:
            loaded.close()
        return cls(config, ca, ca.inventory.database)

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        self.db.close()

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on one of the service's threads, awaited.

        asyncio's own executor hand-off, not Starlette's run_in_threadpool (anyio's
        worker threads): it costs half the CPU per call (56 µs against 112 µs,
        measured), and a request makes one.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def inventory(self) -> Inventory:
        assert self.ca.inventory is not None
        return self.ca.inventory

    # -- audit -----------------------------------------------------------------------

    def audit_event(self, action: str, **fields: object) -> None:
        """One audit line: ``issue route=enroll serial=1f… subject="CN=a" sans=DNS:a …``.

        Actions: ``issue``, ``renew``, ``revoke``. Fields with None are left out.
        """
        parts = [action] + [
            f"{key}={_audit_value(value)}" for key, value in fields.items() if value is not None
        ]
        self.audit.info(" ".join(parts))

    # -- rate limits -----------------------------------------------------------------

    def check_rate(self, *keys: str, tx: Transaction | None = None) -> None:
        """Count one request for each key (``addr:1.2.3.4``, ``token:…``, ``account:…``)
        in this minute's window, shared by every replica through the database; refuse
        with 429 and Retry-After once a key is past ``--rate-limit``. Within ``tx`` when
        given (ACME counts in the transaction that spends the request's nonce)."""
        now = self.now()
        window = now.replace(second=0, microsecond=0)
        start = format_time(window)
        # One statement for all keys (one round trip to PostgreSQL), in one order, so two
        # transactions never lock the same rows the other way round.
        ordered = sorted(set(keys))
        values = ", ".join("(?, ?, 1)" for _ in ordered)
        sql = (
            f"INSERT INTO rate_limits (key, window_start, count) VALUES {values} "
            "ON CONFLICT (key, window_start) DO UPDATE "
            "SET count = rate_limits.count + 1 RETURNING key, count"
        )
        params = [v for key in ordered for v in (key, start)]
        # Alone, not durable: a count lost with a power cut does no harm.
        ctx = contextlib.nullcontext(tx) if tx is not None else self.db.transaction(durable=False)
        with ctx as tx:
            counts = [(str(r["key"]), int(r["count"])) for r in tx.all(sql, params)]
        for key, count in counts:
            if count > self.config.rate_limit:
                retry = max(1, RATE_WINDOW - int((now - window).total_seconds()))
                kind = key.split(":", 1)[0]
                raise RefusedError(
                    f"too many requests for this {kind} ({self.config.rate_limit} a minute)",
                    status=429,
                    retry_after=retry,
                    hint=f"retry after {retry} s",
                )

    def forget_old_rate_windows(self) -> int:
        """Drop rate-limit windows older than the current one (maintenance)."""
        before = self.now().replace(second=0, microsecond=0) - dt.timedelta(seconds=RATE_WINDOW)
        with self.db.transaction(durable=False) as tx:
            return tx.execute(
                "DELETE FROM rate_limits WHERE window_start < ?", (format_time(before),)
            )

    # -- replicas --------------------------------------------------------------------

    def beat(self) -> None:
        """Record that this replica is alive (every REPLICA_BEAT seconds)."""
        now = format_time(self.now())
        with self.db.transaction(durable=False) as tx:
            tx.execute(
                "INSERT INTO service_replicas (id, started_at, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                (self.replica_id, format_time(self.started_at), now),
            )

    def leave(self) -> None:
        """Stopping cleanly: the others need not wait to take over what was claimed here."""
        with self.db.transaction(durable=False) as tx:
            tx.execute("DELETE FROM service_replicas WHERE id = ?", (self.replica_id,))

    def replica_gone(self, tx: Transaction, replica_id: str) -> bool:
        """True when ``replica_id`` has stopped: no row, or silent for REPLICA_LOST."""
        row = tx.one("SELECT seen_at FROM service_replicas WHERE id = ?", (replica_id,))
        if row is None:
            return True
        return parse_time(row["seen_at"]) + REPLICA_LOST <= self.now()

    def forget_old_replicas(self) -> int:
        """Drop rows of replicas silent for REPLICA_FORGET (maintenance)."""
        with self.db.transaction(durable=False) as tx:
            return tx.execute(
                "DELETE FROM service_replicas WHERE seen_at < ?",
                (format_time(self.now() - REPLICA_FORGET),),
            )

    # -- CRL -------------------------------------------------------------------------

    def crl_der(self) -> bytes:
        """The CRL as DER: the cached one while it lists every revocation and is less than
        half-way to its nextUpdate, else a new one (with the next CRL number)."""
        from mtlskit.pki.crl import build_crl

        inv = self.inventory()
        records = inv.revoked()
        revoked = tuple(
            (r.serial, format_time(r.revoked_at) if r.revoked_at else "") for r in records
        )
        now = self.now()
        with self._crl_lock:
            cached = self._crl
            if cached is not None and cached.revoked == revoked and now < cached.remake_at:
                return cached.der
            crl = build_crl(self.ca, records, number=inv.next_crl_number(), days=CRL_DAYS)
            next_update = crl.next_update_utc or now + dt.timedelta(days=CRL_DAYS)
            self._crl = _CachedCRL(
                der=crl.public_bytes(serialization.Encoding.DER),
                next_update=next_update,
                remake_at=now + (next_update - now) / 2,
                revoked=revoked,
            )
            self.metrics.crl_next_update = next_update.timestamp()
            return self._crl.der

    # -- the service's own server certificate ----------------------------------------

    @property
    def server_cert_path(self) -> Path:
        return self.config.service_dir / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.config.service_dir / "server.key"

    def server_names(self) -> list[str]:
        """The names of the service's certificate: the --url host, localhost, 127.0.0.1,
        and --host when it is a specific address."""
        names: list[str] = []
        if self.config.url is not None:
            host = urlsplit(self.config.url).hostname
            if host:
                names.append(host)
        names += ["localhost", "127.0.0.1"]
        try:
            addr = ipaddress.ip_address(self.config.host)
            if not addr.is_unspecified:
                names.append(str(addr))
        except ValueError:
            if self.config.host:
                names.append(self.config.host)
        return list(dict.fromkeys(n.lower() for n in names))

    def server_certificate_due(self, now: dt.datetime | None = None) -> str | None:
        """Why the service's certificate must be (re-)issued now, or None."""
        from mtlskit.pki.names import san_strings

        now = now or self.now()
        if not self.server_cert_path.exists() or not self.server_key_path.exists():
            return "first start"
        try:
            cert = read_certificates(self.server_cert_path)[0]
        except PKIError:
            return "unreadable certificate"
        if not issued_by(cert, self.ca.certificate):
            return "issued by another CA"
        wanted = set(self.server_names())
        have = {s.split(":", 1)[1].lower() for s in san_strings(cert)}
        if not wanted <= have:
            return "names changed"
        if now >= due_at(cert):
            return "due"
        return None

    def ensure_server_certificate(self, now: dt.datetime | None = None) -> bool:
        """Issue CA_DIR/service/server.{crt,key} when missing, foreign, or 2/3 through its
        life; True when it wrote new files (the server then reloads them)."""
        why = self.server_certificate_due(now)
        if why is None:
            return False
        names = self.server_names()
        start = now or self.now()
        issued = self.ca.issue(
            "server", f"CN={names[0]}", sans=names, not_after=start + SERVICE_CERT_LIFETIME
        )
        write_many(
            [
                (self.server_key_path, issued.key_pem(), KEY_MODE),
                (self.server_cert_path, issued.cert_pem, CERT_MODE),
            ],
            force=True,
        )
        serial = format(issued.certificate.serial_number, "x")
        self.audit_event(
            "issue",
            route="service",
            serial=serial,
            subject=issued.certificate.subject.rfc4514_string(),
            sans=names,
            profile="server",
            not_after=format_time(issued.certificate.not_valid_after_utc),
            reason=why,
        )
        self.metrics.count_issuance("service", "issued")
        log.info("service certificate issued (%s): %s", why, self.server_cert_path)
        return True
