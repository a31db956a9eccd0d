"""One database for a CA: SQLite on one machine, PostgreSQL for several replicas.

The inventory (:mod:`mtlskit.pki.inventory`) and the CA service's state
(:mod:`mtlskit.service`) share one schema, built by the numbered migrations in
:data:`MIGRATIONS`. Both dialects run the same SQL: ``?`` placeholders
(translated to ``%s`` for psycopg), portable types (``TEXT``, ``BIGINT``),
identifiers made in Python (random, so replicas never hand out the same one),
and ``UNIQUE`` constraints where two writers could race.

::

    db = open_database("certs/ca.db")                  # SQLite (WAL), the default
    db = open_database("postgresql://ca@db/ca")        # PostgreSQL (psycopg 3)
    with db.transaction() as tx:                       # BEGIN IMMEDIATE on SQLite
        tx.execute("UPDATE tokens SET used_at = ? WHERE id = ? AND used_at IS NULL", (now, i))
        row = tx.one("SELECT value FROM meta WHERE key = ?", ("ca_id",))

Each thread gets its own connection (ASGI endpoints that are plain functions run
in a thread pool), closed by :meth:`Database.close` or when the object goes away.
A connection that fails is dropped and the next transaction opens a new one (a
transaction that cannot even begin on a kept connection retries once on a new
one), so a service whose database comes back recovers by itself. Any driver
error becomes :class:`~mtlskit.errors.StorageError` (``unavailable`` when the
database cannot be reached), :class:`IntegrityError` for a violated ``UNIQUE``
or ``CHECK`` constraint, or :class:`UnusableDatabaseError` for a file that is
not an SQLite database, so callers never see a driver's exception types.

psycopg is imported only for a ``postgresql://`` URL: it is an optional
dependency (``mtlskit[postgresql]``). Opening never creates or changes anything; the first transaction on a SQLite
path that does not exist creates the file, so callers that must not create one
check first (:mod:`mtlskit.pki.inventory` does).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from mtlskit.errors import StorageError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Database",
    "IntegrityError",
    "Row",
    "Transaction",
    "UnusableDatabaseError",
    "is_postgresql_url",
    "open_database",
]

Row = dict[str, Any]
Params = Sequence[object]

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 5

# Migrations: (version, statements). Append only; never edit a released one.
# Version 1 is the inventory as mtlskit first made it (`meta`, `certs`); a ca.db
# from before migrations says `meta.schema = 1` and continues from there.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """CREATE TABLE IF NOT EXISTS certs (
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
            )""",
            "CREATE INDEX IF NOT EXISTS certs_not_after ON certs (not_after)",
        ),
    ),
    (
        2,
        (
            # One-time enrollment tokens: only the SHA-256 of the token is kept.
            """CREATE TABLE IF NOT EXISTS tokens (
                id TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                sans TEXT NOT NULL DEFAULT '[]',
                profile TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                used_at TEXT,
                serial TEXT
            )""",
            # ACME (RFC 8555) state. Objects are JSON documents in `body`, with the
            # columns that queries need kept beside them.
            """CREATE TABLE IF NOT EXISTS acme_nonces (
                nonce TEXT PRIMARY KEY,
                expires_at TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS acme_nonces_expires ON acme_nonces (expires_at)",
            """CREATE TABLE IF NOT EXISTS acme_accounts (
                id TEXT PRIMARY KEY,
                jwk_thumbprint TEXT NOT NULL UNIQUE,
                jwk TEXT NOT NULL,
                status TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS acme_orders (
                id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                status TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                body TEXT NOT NULL,
                serial TEXT,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS acme_orders_account ON acme_orders (account_id)",
            """CREATE TABLE IF NOT EXISTS acme_authzs (
                id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                order_id TEXT NOT NULL,
                identifier_type TEXT NOT NULL,
                identifier_value TEXT NOT NULL,
                status TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS acme_authzs_order ON acme_authzs (order_id)",
            """CREATE TABLE IF NOT EXISTS acme_challenges (
                id TEXT PRIMARY KEY,
                authz_id TEXT NOT NULL,
                type TEXT NOT NULL,
                token TEXT NOT NULL,
                status TEXT NOT NULL,
                body TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS acme_challenges_authz ON acme_challenges (authz_id)",
            # Rate limits: one row per (key, window start), counted with UPSERT.
            """CREATE TABLE IF NOT EXISTS rate_limits (
                key TEXT NOT NULL,
                window_start TEXT NOT NULL,
                count BIGINT NOT NULL,
                PRIMARY KEY (key, window_start)
            )""",
        ),
    ),
    (
        3,
        (
            # The running `ca serve` replicas: each beats every few seconds, so another
            # can tell that work a replica claimed (an ACME validation) died with it.
            """CREATE TABLE IF NOT EXISTS service_replicas (
                id TEXT PRIMARY KEY,
                started_at TEXT NOT NULL,
                seen_at TEXT NOT NULL
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Any value below 2**31; both dialects take it as a plain integer.
_PG_MIGRATION_LOCK = 0x6D746C73


class IntegrityError(StorageError):
    """A ``UNIQUE`` or ``CHECK`` constraint refused a write (e.g. a serial already used)."""


class UnusableDatabaseError(StorageError):
    """The file is not an SQLite database (or a damaged one)."""


# SQLSTATE classes of a server that cannot be reached or is going away: connection
# exceptions (08), operator intervention such as a shutdown (57), insufficient
# resources such as too many connections (53). PostgreSQL docs, appendix A.
_UNAVAILABLE_SQLSTATES = ("08", "57", "53")


def is_postgresql_url(location: str | os.PathLike[str]) -> bool:
    text = os.fspath(location)
    return text.startswith(("postgresql://", "postgres://"))


def _describe(location: str) -> str:
    """A location fit for messages: a PostgreSQL URL without its password."""
    if not is_postgresql_url(location):
        return location
    scheme, _, rest = location.partition("://")
    rest = rest.split("?", 1)[0]  # query parameters may carry a password too
    creds, at, host = rest.rpartition("@")
    if not at:
        return f"{scheme}://{rest}"
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


class Transaction:
    """One open transaction; SQL uses ``?`` placeholders in either dialect."""

    def __init__(self, database: Database, conn: Any, *, durable: bool = True) -> None:
        self._db = database
        self._conn = conn
        self.durable = durable  # see Database.transaction
        self._depth = 0
        self.committed: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the transaction has committed (never if it rolls back, or
        if the savepoint it was registered in is rolled back): an audit line, a counter."""
        self.committed.append(callback)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested part of the transaction: an exception in the block undoes what it
        wrote (and its :meth:`on_commit` callbacks), then propagates; the transaction
        goes on. Both dialects speak ``SAVEPOINT``; in PostgreSQL it is also the way
        to keep using a transaction after a statement failed (a UNIQUE violation)."""
        self._depth += 1
        name = f"sp{self._depth}"
        callbacks = len(self.committed)
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            del self.committed[callbacks:]
            raise
        else:
            self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._depth -= 1

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return self._db.dialect

    def _sql(self, sql: str) -> str:
        if self._db.dialect == "postgresql":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        cur = self._run(sql, params)
        count = cur.rowcount
        cur.close()
        return int(count)

    def one(self, sql: str, params: Params = ()) -> Row | None:
        cur = self._run(sql, params)
        row = cur.fetchone()
        cur.close()
        return None if row is None else dict(row)

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        cur = self._run(sql, params)
        rows = cur.fetchall()
        cur.close()
        return [dict(r) for r in rows]

    def _run(self, sql: str, params: Params) -> Any:
        try:
            return self._conn.execute(self._sql(sql), tuple(params))
        except Exception as exc:
            raise self._db.translate(exc) from exc


class Database:
    """A CA's database; see the module docstring. Use :func:`open_database`."""

    def __init__(self, location: str, dialect: Literal["sqlite", "postgresql"]) -> None:
        self.location = location
        self.dialect: Literal["sqlite", "postgresql"] = dialect
        self.name = _describe(location)
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._writer = threading.Lock() if dialect == "sqlite" else None

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            # Autocommit mode: transactions are explicit. BEGIN IMMEDIATE takes the write
            # lock up front, so two writers queue on busy_timeout instead of deadlocking.
            conn = sqlite3.connect(
                self.location,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.DatabaseError:
                conn.close()
                raise
            return conn
        import psycopg  # only for a postgresql:// URL
        from psycopg.rows import dict_row

        return psycopg.connect(
            self.location,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=CONNECT_TIMEOUT_S,
        )

    def _connection(self) -> tuple[Any, bool]:
        """This thread's connection, and whether it was just opened."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, False
        try:
            conn = self._connect()
        except Exception as exc:
            raise self.translate(exc) from exc
        self._local.conn = conn
        self._local.synchronous = "FULL" if self.dialect == "sqlite" else None
        with self._lock:
            self._all.append(conn)
        return conn, True

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._all.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close every connection this object opened, in every thread."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()

    def __del__(self) -> None:
        # Drivers warn about connections left open (ResourceWarning: psycopg, and
        # sqlite3 since Python 3.13); an object that goes away closes its own.
        with contextlib.suppress(Exception):
            self.close()

    # -- transactions ------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """A transaction committed when the block ends, rolled back on any error.

        SQLite: ``BEGIN IMMEDIATE`` (the write lock up front). PostgreSQL: READ
        COMMITTED; races are settled by ``UNIQUE`` constraints and conditional
        ``UPDATE … WHERE status = ?`` statements whose row count tells who won.

        ``durable=False`` is for writes whose loss does no harm (a nonce, a rate count,
        an ACME order's progress): the commit does not wait for the disk, so a power
        loss or an OS crash (not a crash of our process) may undo the last ones; the
        database is never damaged. SQLite: ``synchronous=NORMAL`` instead of ``FULL``
        (WAL mode; 5x less CPU and 30x less time per commit, measured on ext4);
        PostgreSQL: ``synchronous_commit`` off. A certificate is only ever recorded in
        a durable transaction (the inventory checks).
        """
        if getattr(self._local, "busy", False):
            # A second BEGIN on this thread's connection would fail (SQLite) or, worse,
            # be ignored and commit the outer transaction early (PostgreSQL).
            raise RuntimeError("a transaction is already open in this thread: pass it down")
        # SQLite has one writer at a time, and every transaction here writes (BEGIN
        # IMMEDIATE): this process's threads queue on a lock of ours, handed over the
        # moment a commit ends. SQLite's busy handler (for other processes) polls
        # with sleeps of up to 100 ms instead: the file sat idle between commits, and
        # enrollments ran at a third of what the disk allows (measured).
        with self._writer if self._writer is not None else contextlib.nullcontext():
            tx = self._begin(durable)
            self._local.busy = True
            try:
                yield tx
            except BaseException:
                try:
                    tx._conn.execute("ROLLBACK")
                except Exception:
                    self._drop()
                raise
            finally:
                self._local.busy = False
            try:
                tx._conn.execute("COMMIT")
            except Exception as exc:
                self._drop()
                raise self.translate(exc) from exc
        for callback in tx.committed:
            callback()

    def _begin(self, durable: bool) -> Transaction:
        if self.dialect == "sqlite":
            begin = "BEGIN IMMEDIATE"
        else:
            begin = "BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit TO OFF"
        while True:
            conn, fresh = self._connection()
            try:
                if self.dialect == "sqlite":
                    # A connection-wide setting, which SQLite refuses to change inside a
                    # transaction: set before BEGIN, only when it changes.
                    level = "FULL" if durable else "NORMAL"
                    if getattr(self._local, "synchronous", None) != level:
                        conn.execute(f"PRAGMA synchronous = {level}")
                        self._local.synchronous = level
                conn.execute(begin)
                return Transaction(self, conn, durable=durable)
            except Exception as exc:
                error = self.translate(exc)
                self._drop()
                # A kept connection may have died with a server restart since its last
                # use: nothing ran yet, so try once more on a new connection.
                if fresh or not error.unavailable:
                    raise error from exc

    def translate(self, exc: Exception) -> StorageError:
        """A driver's exception as ours; a broken connection is dropped for the next try."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, sqlite3.IntegrityError):
            return IntegrityError(f"constraint failed: {exc}", file=self.name)
        if isinstance(exc, sqlite3.OperationalError):
            # A connection opened while the file could not be written stays read-only
            # ("attempt to write a readonly database") after the file is writable again:
            # drop it, the next transaction opens a new one (and the service recovers).
            self._drop()
            return StorageError(
                f"database error: {exc}",
                file=self.name,
                hint="check the file's permissions and free space",
            )
        if isinstance(exc, sqlite3.DatabaseError):
            return UnusableDatabaseError(
                f"not a usable database: {exc}", file=self.name, hint="move it away"
            )
        if self.dialect == "postgresql":
            import psycopg

            if isinstance(exc, psycopg.errors.IntegrityError):
                return IntegrityError(f"constraint failed: {exc}", file=self.name)
            state = getattr(exc, "sqlstate", None)
            if isinstance(exc, psycopg.InterfaceError) or (
                isinstance(exc, psycopg.OperationalError)
                and (state is None or state.startswith(_UNAVAILABLE_SQLSTATES))
            ):
                self._drop()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                return StorageError(
                    f"database unavailable: {first}",
                    file=self.name,
                    hint="check that PostgreSQL is running and the URL is right",
                    unavailable=True,
                )
            if isinstance(exc, psycopg.Error):
                return StorageError(f"database error: {exc}", file=self.name)
        return StorageError(f"database error: {exc}", file=self.name)

    # -- schema ------------------------------------------------------------------------

    def schema_version(self, tx: Transaction | None = None) -> int:
        """The schema version the database has (0 when it has none), read in ``tx``
        or in a transaction of its own."""
        if tx is None:
            with self.transaction() as own:
                return self._version(own)
        return self._version(tx)

    def _version(self, tx: Transaction) -> int:
        if self.dialect == "sqlite":
            found = tx.one("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
        else:
            found = tx.one("SELECT to_regclass('meta') IS NOT NULL AS present")
            found = found if found and found["present"] else None
        if not found:
            return 0
        row = tx.one("SELECT value FROM meta WHERE key = 'schema'")
        return int(row["value"]) if row else 1

    def migrate(self, then: Callable[[Transaction], None] | None = None) -> int:
        """Bring the schema up to :data:`SCHEMA_VERSION`; the version it had before.

        Safe when several replicas start at once: SQLite holds the write lock, and
        PostgreSQL an advisory lock, for the whole migration. ``then(tx)`` runs in
        the same transaction, under the same lock, after the migrations (the
        inventory claims a new database for its CA there).
        """
        with self.transaction() as tx:
            if self.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
            before = self._version(tx)
            if before > SCHEMA_VERSION:
                raise StorageError(
                    f"database was made by a newer mtlskit (schema {before}, this one "
                    f"knows {SCHEMA_VERSION})",
                    file=self.name,
                    hint="upgrade mtlskit",
                )
            for version, statements in MIGRATIONS:
                if version <= before:
                    continue
                for statement in statements:
                    tx.execute(statement)
            if before < SCHEMA_VERSION:
                tx.execute("DELETE FROM meta WHERE key = 'schema'")
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            if then is not None:
                then(tx)
        return before


def open_database(location: str | os.PathLike[str]) -> Database:
    """A database by location: a ``postgresql://`` URL, else a SQLite file path.

    Nothing is created or migrated here; :meth:`Database.migrate` does that.
    """
    text = os.fspath(location)
    if is_postgresql_url(text):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StorageError(
                "PostgreSQL needs psycopg 3",
                file=_describe(text),
                hint="pip install 'mtlskit[postgresql]'",
            ) from None
        return Database(text, "postgresql")
    return Database(str(Path(text)), "sqlite")
