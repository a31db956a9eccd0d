"""ACME state in the CA's database (schema: :mod:`mtlskit.database`, migration 2).

Every object is a row whose ``body`` holds its JSON fields; the columns that
queries select on (status, owner, expiry) sit beside it. Identifiers are random
(``secrets``), so replicas sharing one PostgreSQL never hand out the same one,
and every state change that two replicas could race on is a conditional
``UPDATE … WHERE status = ?`` whose row count tells who won.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

from mtlskit.database import Transaction
from mtlskit.pki.inventory import format_time

__all__ = [
    "NONCE_LIFETIME",
    "Account",
    "Authz",
    "Challenge",
    "Order",
    "consume_nonce",
    "mint_nonce",
    "new_id",
]

NONCE_LIFETIME = dt.timedelta(hours=1)
# One request in this many also sweeps expired nonces and rate-limit windows.
_SWEEP_ONE_IN = 64


def new_id() -> str:
    """128 random bits, base64url: unguessable, unique across replicas."""
    return secrets.token_urlsafe(16)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


# -- nonces (RFC 8555 section 6.5) ---------------------------------------------------------


def mint_nonce(tx: Transaction, now: dt.datetime) -> str:
    nonce = secrets.token_urlsafe(16)
    tx.execute(
        "INSERT INTO acme_nonces (nonce, expires_at) VALUES (?, ?)",
        (nonce, format_time(now + NONCE_LIFETIME)),
    )
    if random.randrange(_SWEEP_ONE_IN) == 0:
        tx.execute("DELETE FROM acme_nonces WHERE expires_at < ?", (format_time(now),))
    return nonce


def consume_nonce(tx: Transaction, nonce: str, now: dt.datetime) -> bool:
    """Use a nonce up: True once for a nonce this CA gave out and that has not expired."""
    return (
        tx.execute(
            "DELETE FROM acme_nonces WHERE nonce = ? AND expires_at >= ?",
            (nonce, format_time(now)),
        )
        == 1
    )


# -- objects -------------------------------------------------------------------------------


@dataclass
class Account:
    id: str
    thumbprint: str
    jwk: str
    status: str
    body: dict[str, Any]
    created_at: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Account:
        return cls(
            row["id"],
            row["jwk_thumbprint"],
            row["jwk"],
            row["status"],
            json.loads(row["body"]),
            row["created_at"],
        )

    @classmethod
    def get(cls, tx: Transaction, account_id: str) -> Account | None:
        row = tx.one("SELECT * FROM acme_accounts WHERE id = ?", (account_id,))
        return cls.from_row(row) if row else None

    @classmethod
    def by_thumbprint(cls, tx: Transaction, thumb: str) -> Account | None:
        row = tx.one("SELECT * FROM acme_accounts WHERE jwk_thumbprint = ?", (thumb,))
        return cls.from_row(row) if row else None

    def insert(self, tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO acme_accounts (id, jwk_thumbprint, jwk, status, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.id, self.thumbprint, self.jwk, self.status, _dumps(self.body), self.created_at),
        )

    def save(self, tx: Transaction) -> None:
        tx.execute(
            "UPDATE acme_accounts SET jwk_thumbprint = ?, jwk = ?, status = ?, body = ? "
            "WHERE id = ?",
            (self.thumbprint, self.jwk, self.status, _dumps(self.body), self.id),
        )


@dataclass
class Order:
    id: str
    account_id: str
    status: str
    expires_at: str
    body: dict[str, Any]  # identifiers, authzs (ids), error, chain_pem
    serial: str | None
    created_at: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Order:
        return cls(
            row["id"],
            row["account_id"],
            row["status"],
            row["expires_at"],
            json.loads(row["body"]),
            row["serial"],
            row["created_at"],
        )

    @classmethod
    def get(cls, tx: Transaction, order_id: str) -> Order | None:
        row = tx.one("SELECT * FROM acme_orders WHERE id = ?", (order_id,))
        return cls.from_row(row) if row else None

    @classmethod
    def by_serial(cls, tx: Transaction, serial: str) -> Order | None:
        row = tx.one("SELECT * FROM acme_orders WHERE serial = ?", (serial,))
        return cls.from_row(row) if row else None

    @classmethod
    def of_account(cls, tx: Transaction, account_id: str) -> list[Order]:
        rows = tx.all(
            "SELECT * FROM acme_orders WHERE account_id = ? ORDER BY created_at", (account_id,)
        )
        return [cls.from_row(r) for r in rows]

    def insert(self, tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO acme_orders (id, account_id, status, expires_at, body, serial, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.id,
                self.account_id,
                self.status,
                self.expires_at,
                _dumps(self.body),
                self.serial,
                self.created_at,
            ),
        )

    def move(self, tx: Transaction, old: str | tuple[str, ...], new: str) -> bool:
        """Change the status from ``old`` (and save the body); False when another writer won."""
        olds = (old,) if isinstance(old, str) else old
        marks = ", ".join("?" for _ in olds)
        changed = tx.execute(
            f"UPDATE acme_orders SET status = ?, body = ?, serial = ? "
            f"WHERE id = ? AND status IN ({marks})",
            (new, _dumps(self.body), self.serial, self.id, *olds),
        )
        if changed:
            self.status = new
        return changed == 1


@dataclass
class Authz:
    id: str
    account_id: str
    order_id: str
    identifier_type: str
    identifier_value: str
    status: str
    expires_at: str
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Authz:
        return cls(
            row["id"],
            row["account_id"],
            row["order_id"],
            row["identifier_type"],
            row["identifier_value"],
            row["status"],
            row["expires_at"],
            json.loads(row["body"]),
        )

    @classmethod
    def get(cls, tx: Transaction, authz_id: str) -> Authz | None:
        row = tx.one("SELECT * FROM acme_authzs WHERE id = ?", (authz_id,))
        return cls.from_row(row) if row else None

    @classmethod
    def of_order(cls, tx: Transaction, order_id: str) -> list[Authz]:
        rows = tx.all("SELECT * FROM acme_authzs WHERE order_id = ?", (order_id,))
        return [cls.from_row(r) for r in rows]

    def insert(self, tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO acme_authzs (id, account_id, order_id, identifier_type, "
            "identifier_value, status, expires_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.id,
                self.account_id,
                self.order_id,
                self.identifier_type,
                self.identifier_value,
                self.status,
                self.expires_at,
                _dumps(self.body),
            ),
        )

    def move(self, tx: Transaction, old: str, new: str) -> bool:
        changed = tx.execute(
            "UPDATE acme_authzs SET status = ?, body = ? WHERE id = ? AND status = ?",
            (new, _dumps(self.body), self.id, old),
        )
        if changed:
            self.status = new
        return changed == 1


@dataclass
class Challenge:
    id: str
    authz_id: str
    type: str
    token: str
    status: str
    # validated, error; while processing: processing_since, processing_by (replica id)
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Challenge:
        return cls(
            row["id"],
            row["authz_id"],
            row["type"],
            row["token"],
            row["status"],
            json.loads(row["body"]),
        )

    @classmethod
    def get(cls, tx: Transaction, challenge_id: str) -> Challenge | None:
        row = tx.one("SELECT * FROM acme_challenges WHERE id = ?", (challenge_id,))
        return cls.from_row(row) if row else None

    @classmethod
    def of_authz(cls, tx: Transaction, authz_id: str) -> list[Challenge]:
        rows = tx.all("SELECT * FROM acme_challenges WHERE authz_id = ? ORDER BY type", (authz_id,))
        return [cls.from_row(r) for r in rows]

    def insert(self, tx: Transaction) -> None:
        tx.execute(
            "INSERT INTO acme_challenges (id, authz_id, type, token, status, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.id, self.authz_id, self.type, self.token, self.status, _dumps(self.body)),
        )

    def move(self, tx: Transaction, old: str | tuple[str, ...], new: str) -> bool:
        olds = (old,) if isinstance(old, str) else old
        marks = ", ".join("?" for _ in olds)
        changed = tx.execute(
            f"UPDATE acme_challenges SET status = ?, body = ? WHERE id = ? AND status IN ({marks})",
            (new, _dumps(self.body), self.id, *olds),
        )
        if changed:
            self.status = new
        return changed == 1
