"""One-time enrollment tokens: ``mtlskit ca token NAME`` makes one, ``POST /enroll``
spends it.

A token is 256 random bits (``secrets.token_urlsafe(32)``). Only its SHA-256 is
stored (``tokens`` table), with what it allows: the subject's common name, the
SANs, the profile and the expiry. It is spent with one conditional ``UPDATE …
WHERE used_at IS NULL``, whose row count says who won when two requests race,
in SQLite and in PostgreSQL alike, in the one transaction that also counts the
request against the rate limit and records the certificate: a token is spent
exactly when its certificate is in the inventory, so a failed issuance or a
database outage does not burn it, and a spent token names its certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from mtlskit.database import Database, Row, Transaction
from mtlskit.errors import ConfigError, RefusedError
from mtlskit.pki import profiles
from mtlskit.pki.inventory import format_time, parse_time
from mtlskit.pki.names import format_san, parse_sans

__all__ = [
    "DEFAULT_TTL",
    "Token",
    "create_token",
    "find_token",
    "refuse_used",
    "spend",
    "token_hash",
]

DEFAULT_TTL = dt.timedelta(minutes=10)
MAX_TTL = dt.timedelta(days=30)
TOKEN_BYTES = 32


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class Token:
    """What a token allows (never the token itself)."""

    id: str
    name: str
    sans: tuple[str, ...]  # "DNS:app", "IP:10.0.0.5" …
    profile: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    serial: str | None

    @classmethod
    def from_row(cls, row: Row) -> Token:
        return cls(
            id=str(row["id"]),
            name=str(row["name"]),
            sans=tuple(json.loads(row["sans"])),
            profile=str(row["profile"]),
            created_at=parse_time(row["created_at"]),
            expires_at=parse_time(row["expires_at"]),
            used_at=parse_time(row["used_at"]) if row["used_at"] else None,
            serial=row["serial"],
        )

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sans": list(self.sans),
            "profile": self.profile,
            "expires_at": format_time(self.expires_at),
        }


def create_token(
    db: Database,
    name: str,
    *,
    profile: str = "client",
    sans: Sequence[str] = (),
    ttl: dt.timedelta = DEFAULT_TTL,
    now: dt.datetime | None = None,
) -> tuple[str, Token]:
    """Store a new token for ``name``; (the token, what it allows). Shown once."""
    profiles.check_profile(profile)
    if not name or not name.strip() or len(name) > 64:
        raise ConfigError("the token's NAME must be 1 to 64 characters (the certificate's CN)")
    if ttl <= dt.timedelta(0) or ttl > MAX_TTL:
        raise ConfigError("--ttl must be more than 0 and at most 30d", hint="e.g. --ttl 10m")
    names = list(sans) or ([name] if profile != "client" else [])
    parsed = [format_san(n) for n in parse_sans(names)]
    if profile != "client" and not parsed:
        raise ConfigError("a server token needs at least one SAN", hint="add --san NAME")
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    record = Token(
        id=secrets.token_hex(8),
        name=name.strip(),
        sans=tuple(parsed),
        profile=profile,
        created_at=now,
        expires_at=now + ttl,
        used_at=None,
        serial=None,
    )
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO tokens (id, token_hash, name, sans, profile, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                token_hash(token),
                record.name,
                json.dumps(list(record.sans)),
                record.profile,
                format_time(record.created_at),
                format_time(record.expires_at),
            ),
        )
    return token, record


_REFUSED = "token refused"


def find_token(tx: Transaction, token: str, *, now: dt.datetime) -> Token:
    """The token's record, whether spent or not; 403 for an unknown or expired one."""
    row = tx.one("SELECT * FROM tokens WHERE token_hash = ?", (token_hash(token),))
    if row is None:
        raise RefusedError(
            f"{_REFUSED}: unknown token", status=403, hint="ask the CA for a new one"
        )
    record = Token.from_row(row)
    if record.used_at is None and now >= record.expires_at:
        raise RefusedError(
            f"{_REFUSED}: expired at {format_time(record.expires_at)}",
            status=403,
            hint="ask the CA for a new one (mtlskit ca token --ttl)",
        )
    return record


def refuse_used(record: Token) -> RefusedError:
    assert record.used_at is not None
    return RefusedError(
        f"{_REFUSED}: already used at {format_time(record.used_at)}",
        status=403,
        hint="a token enrolls once; ask the CA for a new one",
    )


def spend(tx: Transaction, record: Token, serial: str, *, now: dt.datetime) -> None:
    """Mark the token used by the certificate ``serial``, in the transaction that records
    that certificate: a token is never spent without its certificate, nor a certificate
    issued on a spent token. The ``UPDATE … WHERE used_at IS NULL`` makes exactly one
    of several racing requests win (PostgreSQL: the loser waits on the row, then finds
    it changed)."""
    won = tx.execute(
        "UPDATE tokens SET used_at = ?, serial = ? "
        "WHERE id = ? AND used_at IS NULL AND expires_at > ?",
        (format_time(now), serial, record.id, format_time(now)),
    )
    if won != 1:
        raise RefusedError(f"{_REFUSED}: already used", status=403, hint="ask the CA for a new one")
