"""The CA service's settings, parsed once (by the CLI or a caller) into a frozen object.

Every field has a default; :meth:`ServiceConfig.__post_init__` checks them all, so
a bad value is one :class:`~mtlskit.errors.ConfigError` before anything starts.
There is no option that skips ACME validation.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mtlskit.errors import ConfigError
from mtlskit.pki.status import parse_duration

__all__ = [
    "DEFAULT_LIFETIME",
    "ServiceConfig",
    "format_duration",
    "parse_duration",
    "parse_eab",
    "parse_resolve",
]

DEFAULT_LIFETIME = dt.timedelta(hours=24)
MIN_LIFETIME = dt.timedelta(minutes=1)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def format_duration(delta: dt.timedelta) -> str:
    """The inverse of :func:`parse_duration` for log lines: ``1d2h``, ``10m``, ``0s``."""
    seconds = int(delta.total_seconds())
    out = ""
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            out += f"{n}{unit}"
    return out or "0s"


def parse_eab(text: str) -> tuple[str, str]:
    """``KID:HMACKEY_B64URL`` (``--acme-eab``) → (kid, key)."""
    kid, sep, key = text.partition(":")
    if not sep or not kid or not key:
        raise ConfigError(
            f"--acme-eab {text!r} must be KID:KEY", hint="KEY is the HMAC key in base64url"
        )
    return kid, key


def parse_resolve(text: str) -> tuple[str, str]:
    """``NAME:ADDR`` (``--acme-resolve``) → (name, address); IPv6 addresses may follow."""
    name, sep, addr = text.partition(":")
    if not sep or not name or not addr:
        raise ConfigError(
            f"--acme-resolve {text!r} must be NAME:ADDRESS", hint="e.g. app.internal:127.0.0.1"
        )
    return name.lower().rstrip("."), addr.strip("[]")


def _check_allow(rule: str) -> None:
    kind, sep, value = rule.partition(":")
    if sep and kind.upper() == "DNS" and value and " " not in value:
        return
    if sep and kind.upper() == "IP" and value:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(
                f"--acme-allow {rule!r}: {value!r} is not an IP address or network",
                hint="e.g. IP:10.0.0.0/8 or IP:192.0.2.7",
            ) from None
        return
    raise ConfigError(
        f"--acme-allow {rule!r} must be DNS:PATTERN or IP:NETWORK",
        hint="e.g. --acme-allow 'DNS:*.internal' --acme-allow 'IP:10.0.0.0/8'",
    )


def _check_port(value: int | None, flag: str) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{flag} {value} is out of range", hint="use 1-65535")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``mtlskit ca serve`` needs; see docs in SERVICE-API and the README."""

    ca_dir: Path = Path("certs")
    db: str | None = None  # postgresql://… ; None: CA_DIR/ca.db (SQLite)
    host: str = "127.0.0.1"  # listening beyond loopback is explicit
    port: int = 9443
    url: str | None = None  # public base URL; issued certificates then carry URL/crl
    passphrase_file: Path | None = None  # unlocks an encrypted ca.key at start
    lifetime: dt.timedelta = DEFAULT_LIFETIME  # enrolled, ACME and renewed leaves
    max_body: int = 64 * 1024  # 413 beyond
    acme_allow: tuple[str, ...] = ()  # empty: ACME issues nothing
    acme_eab: tuple[tuple[str, str], ...] = ()  # (kid, HMAC key base64url)
    acme_http_port: int = 80
    acme_tls_port: int = 443
    acme_resolve: tuple[tuple[str, str], ...] = ()  # (name, address)
    rate_limit: int = 60  # requests per minute per account / token / address
    metrics_port: int | None = None
    # One log line per request (the server's "new request …"); off by default: the
    # audit log is the record of what the CA did, and the line costs ~9 % of an ACME order.
    log_requests: bool = False

    def __post_init__(self) -> None:
        _check_port(self.port, "--port")
        _check_port(self.metrics_port, "--metrics-port")
        _check_port(self.acme_http_port, "--acme-http-port")
        _check_port(self.acme_tls_port, "--acme-tls-port")
        if self.metrics_port is not None and self.metrics_port == self.port != 0:
            raise ConfigError("--metrics-port must differ from --port")
        if self.url is not None:
            self._check_url(self.url)
        if self.lifetime < MIN_LIFETIME:
            raise ConfigError(
                f"--lifetime {format_duration(self.lifetime)} is too short",
                hint="use 1m or more (24h is the default)",
            )
        if self.max_body < 1024:
            raise ConfigError("--max-body must be at least 1024 bytes")
        if self.rate_limit < 1:
            raise ConfigError("--rate-limit must be 1 or more requests per minute")
        for rule in self.acme_allow:
            _check_allow(rule)
        for kid, key in self.acme_eab:
            try:
                raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
            except (binascii.Error, ValueError):
                raw = b""
            if not kid or len(raw) < 16:
                raise ConfigError(
                    f"--acme-eab {kid}: the HMAC key must be base64url of 16 bytes or more",
                    hint="make one with: openssl rand -base64 32 | tr '+/' '-_' | tr -d '='",
                )
        for name, addr in self.acme_resolve:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(
                    f"--acme-resolve {name}:{addr}: {addr!r} is not an IP address",
                    hint="e.g. --acme-resolve app.internal:127.0.0.1",
                ) from None

    @staticmethod
    def _check_url(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(
                f"--url {url!r} must be https://HOST[:PORT]", hint="e.g. https://ca.internal:9443"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                f"--url {url!r} must not have a path", hint="give the base: https://HOST[:PORT]"
            )
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(f"--url {url!r} has a bad port") from None

    @property
    def db_location(self) -> str:
        """Where the database is: the --db URL, or the SQLite file next to ca.key."""
        return self.db if self.db is not None else str(self.ca_dir / "ca.db")

    @property
    def base_url(self) -> str:
        """The public base URL, no trailing slash."""
        if self.url is not None:
            return self.url.rstrip("/")
        return f"https://localhost:{self.port}"

    @property
    def crl_url(self) -> str | None:
        """The CRL distribution point issued certificates carry (only with --url)."""
        return self.base_url + "/crl" if self.url is not None else None

    @property
    def service_dir(self) -> Path:
        """The service's own server certificate and key: CA_DIR/service/server.{crt,key}."""
        return self.ca_dir / "service"
