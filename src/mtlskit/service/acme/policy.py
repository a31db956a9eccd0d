"""Identifiers (RFC 8555 ``dns``, RFC 8738 ``ip``) and the name policy that decides them.

``--acme-allow`` entries::

    DNS:*.internal      any name under ``internal`` (at any depth), not ``internal`` itself
    DNS:app.example     exactly that name
    IP:10.0.0.0/8       any address in the network
    IP:192.0.2.7        exactly that address

An empty policy allows nothing: a CA that issues to whoever asks is never the default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from mtlskit.errors import ConfigError
from mtlskit.pki.names import parse_san
from mtlskit.service.acme.problems import AcmeProblem

__all__ = [
    "Identifier",
    "NamePolicy",
    "csr_identifiers",
    "parse_identifier",
    "parse_policy",
]

MAX_IDENTIFIERS = 100


@dataclass(frozen=True, order=True)
class Identifier:
    """An ACME identifier in canonical form: ``dns`` lowercase A-labels, ``ip`` RFC 5952."""

    type: str  # "dns" | "ip"
    value: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    @property
    def general_name(self) -> x509.GeneralName:
        if self.type == "ip":
            return x509.IPAddress(ipaddress.ip_address(self.value))
        return x509.DNSName(self.value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def parse_identifier(obj: object) -> Identifier:
    """One ``{"type": …, "value": …}`` from a newOrder payload, or a problem saying why not."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise AcmeProblem("malformed", 'each identifier must be {"type": …, "value": …}')
    kind, value = obj["type"], obj.get("value")
    if not isinstance(value, str) or not value:
        raise AcmeProblem("malformed", f"identifier of type {kind!r} has no value")
    as_json = {"type": kind, "value": value}
    if kind == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise AcmeProblem(
                "malformed", f"{value!r} is not an IP address", identifier=as_json
            ) from None
        return Identifier("ip", str(address))
    if kind != "dns":
        raise AcmeProblem(
            "unsupportedIdentifier",
            f"identifier type {kind!r} is not supported: use dns or ip",
            identifier=as_json,
        )
    if value.startswith("*."):
        # Wildcards can only be proven with dns-01 (RFC 8555 section 7.1.3), which
        # this server does not offer.
        raise AcmeProblem(
            "rejectedIdentifier",
            f"{value}: wildcard names need the dns-01 challenge, which this CA does not offer",
            identifier=as_json,
        )
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        raise AcmeProblem(
            "malformed",
            f"{value} is an IP address: send it as an identifier of type ip (RFC 8738)",
            identifier=as_json,
        )
    try:
        name = parse_san(f"DNS:{value}")
    except ConfigError as exc:
        raise AcmeProblem(
            "rejectedIdentifier", f"{value!r} is not a valid DNS name", identifier=as_json
        ) from exc
    canonical = str(name.value)
    if canonical.endswith(".") or canonical != value.lower():
        raise AcmeProblem(
            "rejectedIdentifier",
            f"{value!r} is not a DNS name in ASCII (A-label) form",
            identifier=as_json,
        )
    return Identifier("dns", canonical)


@dataclass(frozen=True)
class NamePolicy:
    """What ACME may issue: DNS suffixes and exact names, IP networks."""

    dns_suffixes: tuple[str, ...] = ()  # ".internal" for DNS:*.internal
    dns_names: tuple[str, ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def allows(self, ident: Identifier) -> bool:
        if ident.type == "ip":
            address = ipaddress.ip_address(ident.value)
            return any(address in net for net in self.networks)
        return ident.value in self.dns_names or any(
            ident.value.endswith(suffix) for suffix in self.dns_suffixes
        )

    def check(self, ident: Identifier) -> None:
        if not self.allows(ident):
            raise AcmeProblem(
                "rejectedIdentifier",
                f"{ident.value} is outside this CA's name policy (--acme-allow)",
                identifier=ident.to_json(),
            )


def parse_policy(entries: Iterable[str]) -> NamePolicy:
    """``--acme-allow`` values as a :class:`NamePolicy`; a bad entry is a ConfigError."""
    suffixes: list[str] = []
    names: list[str] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in entries:
        kind, sep, value = entry.strip().partition(":")
        kind = kind.upper()
        hint = "use e.g. --acme-allow 'DNS:*.internal' or --acme-allow 'IP:10.0.0.0/8'"
        if not sep or not value or kind not in ("DNS", "IP"):
            raise ConfigError(f"invalid --acme-allow {entry!r}", hint=hint)
        if kind == "IP":
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError as exc:
                raise ConfigError(f"invalid --acme-allow {entry!r}: {exc}", hint=hint) from None
            continue
        wildcard = value.startswith("*.")
        try:
            name = str(parse_san(f"DNS:{value}").value)
        except ConfigError as exc:
            raise ConfigError(f"invalid --acme-allow {entry!r}: {exc.what}", hint=hint) from None
        if wildcard:
            suffixes.append(name[1:])  # "*.internal" -> ".internal"
        else:
            names.append(name)
    return NamePolicy(tuple(suffixes), tuple(names), tuple(networks))


def csr_identifiers(csr: x509.CertificateSigningRequest) -> set[Identifier]:
    """The names a CSR asks for: its SANs and a common name (RFC 8555 section 7.4)."""
    out: set[Identifier] = set()
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    except ValueError as exc:
        raise AcmeProblem("badCSR", f"the CSR's extensions cannot be read: {exc}") from None
    for name in sans:
        if isinstance(name, x509.DNSName):
            out.add(Identifier("dns", name.value.lower()))
        elif isinstance(name, x509.IPAddress):
            out.add(Identifier("ip", str(name.value)))
        else:
            raise AcmeProblem(
                "badCSR", f"the CSR asks for a {type(name).__name__}, which ACME cannot prove"
            )
    for attr in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        cn = str(attr.value).lower()
        try:
            out.add(Identifier("ip", str(ipaddress.ip_address(cn))))
        except ValueError:
            out.add(Identifier("dns", cn))
    return out
