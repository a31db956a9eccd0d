"""Who is on the other end: :class:`PeerIdentity` from a verified handshake, and allow-lists.

The server parses the peer certificate only when something needs it (a log
line, an allow rule, an ASGI app) and at most once per connection.

Allow rules (``--allow-cn``, ``--allow-san``) are shell-style globs
(:func:`fnmatch.fnmatchcase`). A SAN rule names its type, ``DNS:*.example.com``,
``URI:spiffe://example.org/*`` or ``email:*@example.com``; without a type it matches
any DNS, URI or email SAN. DNS names and emails compare case-insensitively. With no
rule at all, every certificate the CA verified is allowed, as in the seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from cryptography import x509
from cryptography.x509.oid import NameOID

from mtlskit.errors import ConfigError
from mtlskit.pki.names import format_san

__all__ = ["AccessPolicy", "PeerIdentity"]

_SAN_TYPES = {"dns": "DNS", "uri": "URI", "email": "email"}


@dataclass(frozen=True)
class PeerIdentity:
    """The identity in a verified peer certificate."""

    subject: str  # RFC 4514, e.g. "CN=client,O=Dev,ST=RB,C=TH"
    common_name: str | None
    subject_alternative_names: tuple[str, ...]  # "DNS:…", "URI:…", "email:…", "IP:…"
    serial_number: int
    fingerprint_sha256: str  # lower-case hex of SHA-256 over the DER
    not_valid_after: dt.datetime

    @classmethod
    def from_der(cls, der: bytes) -> PeerIdentity:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        try:
            ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans = tuple(format_san(n) for n in ext.value)
        except x509.ExtensionNotFound:
            sans = ()
        return cls(
            subject=cert.subject.rfc4514_string(),
            common_name=str(cns[0].value) if cns else None,
            subject_alternative_names=sans,
            serial_number=cert.serial_number,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            not_valid_after=cert.not_valid_after_utc,
        )

    def sans_of(self, kind: str) -> list[str]:
        """The SAN values of one type: ``sans_of("DNS")`` -> ``["api.example.com"]``."""
        prefix = kind + ":"
        return [s[len(prefix) :] for s in self.subject_alternative_names if s.startswith(prefix)]

    def describe(self) -> str:
        """``CN=client SAN=DNS:a,URI:b`` for log lines."""
        text = f"CN={self.common_name}" if self.common_name is not None else self.subject
        if self.subject_alternative_names:
            text += " SAN=" + ",".join(self.subject_alternative_names)
        return text


@dataclass(frozen=True)
class _SanRule:
    kind: str | None  # "DNS", "URI", "email" or None for any of them
    pattern: str


class AccessPolicy:
    """Allow-lists for client identities; an empty policy allows everyone."""

    def __init__(self, allow_cn: Iterable[str] = (), allow_san: Iterable[str] = ()) -> None:
        self.allow_cn = tuple(allow_cn)
        self.san_rules = tuple(self._parse_san(p) for p in allow_san)
        for p in self.allow_cn:
            if not p:
                raise ConfigError("--allow-cn needs a pattern", hint="e.g. --allow-cn 'client*'")

    @staticmethod
    def _parse_san(text: str) -> _SanRule:
        kind, sep, pattern = text.partition(":")
        if sep and kind.lower() in _SAN_TYPES and pattern:
            k = _SAN_TYPES[kind.lower()]
            return _SanRule(k, pattern if k == "URI" else pattern.lower())
        if sep and kind.lower() in ("ip", "dirname"):
            raise ConfigError(
                f"--allow-san {text}: only DNS, URI and email SANs can be allowed",
                hint="use DNS:…, URI:… or email:…",
            )
        if not text:
            raise ConfigError("--allow-san needs a pattern", hint="e.g. --allow-san 'DNS:*.svc'")
        # No known type: a URI such as spiffe://… has its own colon; match any type.
        return _SanRule(None, text)

    @property
    def allows_everyone(self) -> bool:
        return not self.allow_cn and not self.san_rules

    def allows(self, identity: PeerIdentity) -> bool:
        if self.allows_everyone:
            return True
        cn = identity.common_name
        if cn is not None and any(fnmatchcase(cn, p) for p in self.allow_cn):
            return True
        for rule in self.san_rules:
            kinds = (rule.kind,) if rule.kind else ("DNS", "URI", "email")
            for kind in kinds:
                for value in identity.sans_of(kind):
                    if kind != "URI":
                        value = value.lower()
                    pattern = rule.pattern if rule.kind or kind == "URI" else rule.pattern.lower()
                    if fnmatchcase(value, pattern):
                        return True
        return False
