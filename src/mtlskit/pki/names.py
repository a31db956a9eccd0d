"""Names: subjects (``/C=TH/O=Dev/CN=x`` or RFC 4514) and SANs that detect their type."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

from mtlskit.errors import ConfigError

__all__ = [
    "authority_key_id",
    "format_key_id",
    "format_name",
    "format_san",
    "key_id",
    "names_apart",
    "parse_name",
    "parse_san",
    "parse_sans",
    "san_strings",
]

_ATTRS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$")


def parse_name(text: str, *, bare_cn: bool = True) -> x509.Name:
    """Parse ``/C=TH/ST=RB/O=IT Sec/CN=CA`` (openssl ``-subj``) or ``CN=CA,O=IT Sec``.

    A bare word becomes the common name (``localhost``: ``CN=localhost``), unless
    ``bare_cn`` is false, as for ``--subject``: there ``CN`` is a mistake, not ``CN=CN``.
    """
    text = text.strip()
    if not text:
        raise ConfigError("empty subject", hint="give e.g. 'CN=client' or '/O=Dev/CN=client'")
    if "=" not in text:
        if not bare_cn:
            raise ConfigError(
                f"subject {text!r} has no '=': a subject is a list of NAME=VALUE",
                hint=f"e.g. --subject {shlex.quote('CN=' + text)} or '/O=Dev/CN={text}'",
            )
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])
    if text.startswith("/"):
        parts = [p for p in re.split(r"(?<!\\)/", text[1:]) if p]
        pairs = [p.replace("\\/", "/") for p in parts]
    else:
        try:
            return x509.Name.from_rfc4514_string(text)
        except ValueError as exc:
            raise ConfigError(f"invalid subject {text!r}: {exc}", hint="use 'CN=x,O=y'") from exc
    attrs = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        oid = _ATTRS.get(key.strip().upper())
        if not sep or oid is None or not value:
            raise ConfigError(
                f"invalid subject part {pair!r}",
                hint=f"use {'/'.join(k + '=…' for k in ('C', 'ST', 'O', 'CN'))}",
            )
        if oid == NameOID.COUNTRY_NAME and len(value) != 2:
            raise ConfigError(f"country must be 2 letters, not {value!r}", hint="e.g. C=TH")
        attrs.append(x509.NameAttribute(oid, value))
    return x509.Name(attrs)


def _dns(value: str) -> x509.DNSName:
    name = value.rstrip(".")
    wildcard = name.startswith("*.")
    body = name[2:] if wildcard else name
    try:
        ascii_name = body.encode("idna").decode("ascii") if not body.isascii() else body.lower()
    except UnicodeError as exc:
        raise ConfigError(f"invalid DNS name {value!r}: {exc}", hint="check the spelling") from exc
    labels = ascii_name.split(".")
    if not ascii_name or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(
            f"invalid DNS name {value!r}",
            hint="use letters, digits and '-' in dot-separated labels, or '*.' in front",
        )
    return x509.DNSName(("*." if wildcard else "") + ascii_name)


def parse_san(text: str) -> x509.GeneralName:
    """One SAN, its type detected or given: ``DNS:``, ``IP:``, ``email:``, ``URI:``.

    ``127.0.0.1`` and ``::1`` are IPs, ``a@b`` an email, ``spiffe://td/x`` a URI,
    anything else a DNS name (IDNA-encoded when not ASCII; ``*.`` wildcards allowed).
    """
    value = text.strip()
    prefix, sep, rest = value.partition(":")
    kind = prefix.upper() if sep else ""
    if kind.startswith("IP"):  # also openssl's IP.1
        kind, value = "IP", rest
    elif kind.startswith("DNS"):
        kind, value = "DNS", rest
    elif kind in ("EMAIL", "RFC822"):
        kind, value = "EMAIL", rest
    elif kind == "URI" and not rest.startswith("//"):
        kind, value = "URI", rest
    else:
        kind = ""
    if not value:
        raise ConfigError(f"empty SAN {text!r}", hint="e.g. --san localhost --san 127.0.0.1")
    if not kind:
        try:
            ipaddress.ip_address(value)
            kind = "IP"
        except ValueError:
            if "://" in value or value.lower().startswith("urn:"):
                kind = "URI"
            elif "@" in value:
                kind = "EMAIL"
            else:
                kind = "DNS"
    if kind == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ConfigError(
                f"invalid IP address {value!r}", hint="e.g. 127.0.0.1 or ::1"
            ) from exc
    if kind == "EMAIL":
        local, at, domain = value.partition("@")
        if not local or not at or not domain:
            raise ConfigError(f"invalid email {value!r}", hint="e.g. alice@example.com")
        return x509.RFC822Name(f"{local}@{_dns(domain).value}")
    if kind == "URI":
        if not _URI.match(value):
            raise ConfigError(f"invalid URI {value!r}", hint="e.g. spiffe://example.org/svc")
        return x509.UniformResourceIdentifier(value)
    return _dns(value)


def parse_sans(values: Iterable[str]) -> list[x509.GeneralName]:
    """Parse many SANs; each value may hold several separated by commas."""
    out: list[x509.GeneralName] = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                name = parse_san(part)
                if name not in out:
                    out.append(name)
    return out


def format_san(name: x509.GeneralName) -> str:
    """``DNS:localhost``, ``IP:127.0.0.1``, ``email:a@b``, ``URI:spiffe://…``."""
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{name.value.rfc4514_string()}"
    return f"{type(name).__name__}:{getattr(name, 'value', '?')}"


def san_strings(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The SANs of a certificate or CSR as strings; empty when it has none."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [format_san(n) for n in ext.value]


def format_name(name: x509.Name) -> str:
    """``C=TH, ST=RB, O=Dev, CN=localhost``: in certificate order, as ``openssl x509 -text``."""
    if not len(name):
        return "(empty)"
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in name)


# -- telling CAs of the same name apart ---------------------------------------------------

_KEY_ID_BYTES = 8  # enough to tell keys apart; `mtlskit inspect` shows the whole identifier


def _hex(data: bytes) -> str:
    more = "…" if len(data) > _KEY_ID_BYTES else ""
    return ":".join(f"{b:02X}" for b in data[:_KEY_ID_BYTES]) + more


def format_key_id(identifier: bytes) -> str:
    """``key id E2:3B:69:9A:52:B3:0A:B3…``: a key identifier (SKI/AKI) in messages."""
    return f"key id {_hex(identifier)}"


def key_id(cert: x509.Certificate) -> str:
    """A short label of a certificate's key for messages: the start of its
    subjectKeyIdentifier (``key id E2:3B:69:9A:52:B3:0A:B3…``), else of its SHA-256
    fingerprint (``SHA-256 94:0F:5F:…``), both as ``mtlskit inspect`` shows them."""
    from cryptography.hazmat.primitives.hashes import SHA256

    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return format_key_id(ski.digest)
    except x509.ExtensionNotFound:
        return f"SHA-256 {_hex(cert.fingerprint(SHA256()))}"


def authority_key_id(cert: x509.Certificate) -> str | None:
    """The key of ``cert``'s issuer as :func:`key_id` names it (from the
    authorityKeyIdentifier), or None when the certificate does not say."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return format_key_id(aki.key_identifier) if aki.key_identifier else None


def names_apart(
    first: x509.Name, first_key: str | None, second: x509.Name, second_key: str | None
) -> tuple[str, str]:
    """Two names as messages show them (:func:`format_name`), each followed by its key
    (``(key id …)``) when the names are equal: two CAs named alike are told apart."""
    a, b = format_name(first), format_name(second)
    if first == second and first_key != second_key:
        a += f" ({first_key or 'key unknown'})"
        b += f" ({second_key or 'key unknown'})"
    return a, b
