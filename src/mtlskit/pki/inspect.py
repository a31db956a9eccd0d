"""Describe PKI files in plain words: what ``openssl x509/req/crl/pkcs12 -text`` shows.

:func:`describe` reads a file (PEM with any number of blocks, DER, or PKCS#12)
and returns one :class:`InspectedObject` per object in it; :func:`render_text` turns an
item into the human text, and :meth:`InspectedObject.to_dict` into JSON-ready data.
Private keys show their type and size, never the secret.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from mtlskit.errors import PKIError
from mtlskit.pki.keys import describe_key, load_private_key, looks_like_pkcs12
from mtlskit.pki.names import format_name, format_san
from mtlskit.pki.store import read_file

__all__ = ["InspectedObject", "describe", "describe_bytes", "render_text"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "TLS Web Server Authentication (serverAuth)",
    ExtendedKeyUsageOID.CLIENT_AUTH: "TLS Web Client Authentication (clientAuth)",
    ExtendedKeyUsageOID.CODE_SIGNING: "Code Signing",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "E-mail Protection",
    ExtendedKeyUsageOID.TIME_STAMPING: "Time Stamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSP Signing",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "Any Extended Key Usage",
}
_KU_FIELDS = [
    ("digital_signature", "Digital Signature"),
    ("content_commitment", "Non Repudiation"),
    ("key_encipherment", "Key Encipherment"),
    ("data_encipherment", "Data Encipherment"),
    ("key_agreement", "Key Agreement"),
    ("key_cert_sign", "Certificate Sign"),
    ("crl_sign", "CRL Sign"),
]
_EXT_NAMES = {
    ExtensionOID.BASIC_CONSTRAINTS: "Basic Constraints",
    ExtensionOID.KEY_USAGE: "Key Usage",
    ExtensionOID.EXTENDED_KEY_USAGE: "Extended Key Usage",
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME: "Subject Alternative Name",
    ExtensionOID.SUBJECT_KEY_IDENTIFIER: "Subject Key Identifier",
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER: "Authority Key Identifier",
    ExtensionOID.CRL_NUMBER: "CRL Number",
    ExtensionOID.CRL_DISTRIBUTION_POINTS: "CRL Distribution Points",
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS: "Authority Information Access",
    ExtensionOID.NAME_CONSTRAINTS: "Name Constraints",
    ExtensionOID.CERTIFICATE_POLICIES: "Certificate Policies",
}


@dataclass
class InspectedObject:
    """One object found in a file: a certificate, CSR, private key, CRL, or PKCS#12 bag."""

    kind: str  # certificate, csr, private-key, crl, public-key, pkcs12
    source: str
    fields: dict[str, Any] = field(default_factory=dict)
    children: list[InspectedObject] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # e.g. a CSR whose signature fails

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source, **self.fields}
        if self.children:
            out["contents"] = [c.to_dict() for c in self.children]
        if self.problems:
            out["problems"] = list(self.problems)
        return out


# -- formatting helpers -------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _serial(n: int) -> str:
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return _hex(raw).lower()


def _time(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _sig_alg(
    obj: x509.Certificate | x509.CertificateSigningRequest | x509.CertificateRevocationList,
) -> str:
    name = getattr(obj.signature_algorithm_oid, "_name", None)
    return str(name or obj.signature_algorithm_oid.dotted_string)


def _ext_value(value: x509.ExtensionType) -> str:
    if isinstance(value, x509.BasicConstraints):
        text = f"CA:{'TRUE' if value.ca else 'FALSE'}"
        if value.path_length is not None:
            text += f", pathlen:{value.path_length}"
        return text
    if isinstance(value, x509.KeyUsage):
        names = [label for attr, label in _KU_FIELDS if getattr(value, attr)]
        if value.key_agreement:
            names += [
                n
                for f, n in (("encipher_only", "Encipher Only"), ("decipher_only", "Decipher Only"))
                if getattr(value, f)
            ]
        return ", ".join(names) or "(none)"
    if isinstance(value, x509.ExtendedKeyUsage):
        return ", ".join(_EKU_NAMES.get(o, o.dotted_string) for o in value)
    if isinstance(value, x509.SubjectAlternativeName):
        return ", ".join(format_san(n) for n in value)
    if isinstance(value, x509.SubjectKeyIdentifier):
        return _hex(value.digest)
    if isinstance(value, x509.AuthorityKeyIdentifier):
        parts = []
        if value.key_identifier is not None:
            parts.append(f"keyid:{_hex(value.key_identifier)}")
        if value.authority_cert_serial_number is not None:
            parts.append(f"serial:{_serial(value.authority_cert_serial_number)}")
        return ", ".join(parts) or "(empty)"
    if isinstance(value, x509.CRLNumber):
        return str(value.crl_number)
    if isinstance(value, x509.UnrecognizedExtension):
        return f"<{len(value.value)} bytes>"
    return repr(value)


def _extensions(exts: x509.Extensions) -> list[dict[str, Any]]:
    return [
        {
            "name": _EXT_NAMES.get(e.oid, getattr(e.oid, "_name", e.oid.dotted_string)),
            "oid": e.oid.dotted_string,
            "critical": e.critical,
            "value": _ext_value(e.value),
        }
        for e in exts
    ]


def _safe_extensions(
    obj: x509.Certificate | x509.CertificateSigningRequest,
) -> list[dict[str, Any]]:
    try:
        return _extensions(obj.extensions)
    except ValueError as exc:  # a malformed extension: show the rest of the object anyway
        return [{"name": "(unparsable)", "oid": "", "critical": False, "value": str(exc)}]


def _public_key_text(obj: x509.Certificate | x509.CertificateSigningRequest) -> str:
    try:
        return describe_key(obj.public_key())  # type: ignore[arg-type]
    except Exception:  # an algorithm cryptography cannot load (DSA, unknown curves)
        return "unsupported public key"


# -- one object each ----------------------------------------------------------------------


def _certificate(cert: x509.Certificate, source: str, now: dt.datetime) -> InspectedObject:
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    # Days rounded to the nearest, as list and status count them (365, not 364 d 23 h).
    if now > after:
        status = f"expired {round((now - after).total_seconds() / 86400)} days ago"
    elif now < before:
        status = "not valid yet"
    else:
        status = f"valid, {round((after - now).total_seconds() / 86400)} days left"
    is_v1 = cert.version == x509.Version.v1
    return InspectedObject(
        "certificate",
        source,
        {
            "version": 1 if is_v1 else 3,
            "serial": _serial(cert.serial_number),
            "signature_algorithm": _sig_alg(cert),
            "issuer": format_name(cert.issuer),
            "subject": format_name(cert.subject),
            "not_valid_before": _time(before),
            "not_valid_after": _time(after),
            "status": status,
            "self_signed": cert.issuer == cert.subject,
            "public_key": _public_key_text(cert),
            "extensions": [] if is_v1 else _safe_extensions(cert),
            "fingerprint_sha256": _hex(cert.fingerprint(hashes.SHA256())),
        },
    )


def _csr(csr: x509.CertificateSigningRequest, source: str) -> InspectedObject:
    ok = csr.is_signature_valid
    item = InspectedObject(
        "csr",
        source,
        {
            "subject": format_name(csr.subject),
            "signature_algorithm": _sig_alg(csr),
            "public_key": _public_key_text(csr),
            "extensions": _safe_extensions(csr),
            "signature_valid": ok,
        },
    )
    if not ok:
        item.problems.append("the CSR's signature does not verify with its public key")
    return item


def _key(
    data: bytes, source: str, passphrase: bytes | None, *, der: bool = False
) -> InspectedObject:
    """A private key's type and size. Raises ValueError for DER that is not a key."""
    if der:
        try:
            serialization.load_der_private_key(data, password=None)
            encrypted = False
        except TypeError:  # "password was not given but private key is encrypted"
            encrypted = True
    else:
        encrypted = b"ENCRYPTED" in data
    if encrypted and passphrase is None:
        return InspectedObject(
            "private-key",
            source,
            {"type": "unknown (encrypted: give --password-file to show it)", "encrypted": True},
        )
    key = load_private_key(data, file=source, passphrase=passphrase if encrypted else None)
    return InspectedObject(
        "private-key", source, {"type": describe_key(key), "encrypted": encrypted}
    )


def _crl(crl: x509.CertificateRevocationList, source: str) -> InspectedObject:
    revoked = []
    for entry in crl:
        reason = None
        with contextlib.suppress(x509.ExtensionNotFound):
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        revoked.append(
            {
                "serial": _serial(entry.serial_number),
                "revoked_at": _time(entry.revocation_date_utc),
                "reason": reason,
            }
        )
    nxt = crl.next_update_utc
    return InspectedObject(
        "crl",
        source,
        {
            "issuer": format_name(crl.issuer),
            "signature_algorithm": _sig_alg(crl),
            "last_update": _time(crl.last_update_utc),
            "next_update": _time(nxt) if nxt else None,
            "extensions": _extensions(crl.extensions),
            "revoked": revoked,
        },
    )


def _pkcs12(
    data: bytes, source: str, password: bytes | None, now: dt.datetime
) -> InspectedObject | None:
    """A PKCS#12 file, or None when ``data`` is not one."""
    last: Exception | None = None
    for pw in [password] if password is not None else [None, b""]:
        try:
            p12 = pkcs12.load_pkcs12(data, pw)
            break
        except ValueError as exc:
            last = exc
    else:
        if password is None and looks_like_pkcs12(data):
            raise PKIError(
                "PKCS#12 file is protected by a password",
                file=source,
                hint="give it with --password-file",
            ) from last
        if password is not None and looks_like_pkcs12(data):
            raise PKIError(
                "cannot open PKCS#12 file: wrong password",
                file=source,
                hint="check --password-file",
            ) from last
        return None
    item = InspectedObject("pkcs12", source, {"password": bool(password)})
    if p12.key is not None:
        key_type = describe_key(p12.key)  # type: ignore[arg-type]
        item.children.append(
            InspectedObject("private-key", source, {"type": key_type, "encrypted": False})
        )
    certs = ([p12.cert] if p12.cert else []) + list(p12.additional_certs)
    for c in certs:
        child = _certificate(c.certificate, source, now)
        if c.friendly_name:
            child.fields["friendly_name"] = c.friendly_name.decode("utf-8", "replace")
        item.children.append(child)
    return item


# -- the API ------------------------------------------------------------------------------


def describe_bytes(
    data: bytes,
    source: str,
    *,
    password: bytes | None = None,
    now: dt.datetime | None = None,
) -> list[InspectedObject]:
    """Every object in ``data`` (PEM blocks in order, or one DER object, or PKCS#12)."""
    when = now or dt.datetime.now(dt.UTC)
    if b"-----BEGIN " in data:
        blocks = list(_PEM_BLOCK.finditer(data))
        if not blocks:
            raise PKIError(
                "broken PEM file (no complete BEGIN/END block)", file=source, hint="re-export it"
            )
        items: list[InspectedObject] = []
        for m in blocks:
            items.append(_pem_item(m.group(1).decode(), m.group(0), source, password, when))
        return items
    if not data.strip():
        raise PKIError(
            "file is empty", file=source, hint="pass a certificate, CSR, key, CRL or PKCS#12 file"
        )
    return [_der_item(data, source, password, when)]


def _pem_item(
    label: str, block: bytes, source: str, password: bytes | None, now: dt.datetime
) -> InspectedObject:
    try:
        if label in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"):
            return _certificate(x509.load_pem_x509_certificate(block), source, now)
        if label in ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"):
            return _csr(x509.load_pem_x509_csr(block), source)
        if label == "X509 CRL":
            return _crl(x509.load_pem_x509_crl(block), source)
        if label.endswith("PRIVATE KEY"):
            return _key(block, source, password)
        if label == "PUBLIC KEY":
            pub = serialization.load_pem_public_key(block)
            return InspectedObject("public-key", source, {"type": describe_key(pub)})  # type: ignore[arg-type]
    except ValueError as exc:
        raise PKIError(f"broken PEM {label}: {exc}", file=source, hint="re-export it") from exc
    raise PKIError(
        f"unsupported PEM block {label!r}",
        file=source,
        hint="pass a certificate, CSR, private key, CRL or PKCS#12 file",
    )


def _der_item(
    data: bytes, source: str, password: bytes | None, now: dt.datetime
) -> InspectedObject:
    try:
        return _certificate(x509.load_der_x509_certificate(data), source, now)
    except ValueError:
        pass
    try:
        return _crl(x509.load_der_x509_crl(data), source)
    except ValueError:
        pass
    try:
        return _csr(x509.load_der_x509_csr(data), source)
    except ValueError:
        pass
    p12 = _pkcs12(data, source, password, now)
    if p12 is not None:
        return p12
    try:
        return _key(data, source, password, der=True)
    except ValueError:
        pass
    raise PKIError(
        "not a PEM or DER certificate, CSR, key, CRL or PKCS#12 file",
        file=source,
        hint="check that you passed the right file",
    )


def describe(
    path: str | os.PathLike[str], *, password: bytes | None = None, now: dt.datetime | None = None
) -> list[InspectedObject]:
    """Read ``path`` and describe every object in it. Raises :class:`PKIError`."""
    return describe_bytes(read_file(path), os.fspath(path), password=password, now=now)


# -- text ---------------------------------------------------------------------------------

_TITLES = {
    "certificate": "Certificate",
    "csr": "Certificate Request",
    "private-key": "Private Key",
    "public-key": "Public Key",
    "crl": "Certificate Revocation List",
    "pkcs12": "PKCS#12",
}


def _ext_lines(exts: list[dict[str, Any]], indent: str) -> list[str]:
    out = []
    for e in exts:
        crit = " (critical)" if e["critical"] else ""
        out.append(f"{indent}{e['name']}{crit}: {e['value']}")
    return out


def render_text(item: InspectedObject, indent: str = "") -> str:
    """Human text for one item, in the spirit of ``openssl x509 -text -noout``."""
    f = item.fields
    i2, i3 = indent + "    ", indent + "        "
    lines = [f"{indent}{_TITLES.get(item.kind, item.kind)}:"]
    if item.kind == "certificate":
        v = f["version"]
        lines += [
            f"{i2}Version: {v} (0x{v - 1:x})" + ("  (X.509 v1: no extensions)" if v == 1 else ""),
            f"{i2}Serial Number: {f['serial']}",
            f"{i2}Signature Algorithm: {f['signature_algorithm']}",
            f"{i2}Issuer: {f['issuer']}",
            f"{i2}Validity",
            f"{i3}Not Before: {f['not_valid_before']}",
            f"{i3}Not After : {f['not_valid_after']}  ({f['status']})",
            f"{i2}Subject: {f['subject']}" + ("  (self-signed)" if f["self_signed"] else ""),
            f"{i2}Subject Public Key: {f['public_key']}",
        ]
        if f.get("friendly_name"):
            lines.append(f"{i2}Friendly Name: {f['friendly_name']}")
        if f["extensions"]:
            lines.append(f"{i2}X509v3 extensions:")
            lines += _ext_lines(f["extensions"], i3)
        lines.append(f"{i2}SHA-256 Fingerprint: {f['fingerprint_sha256']}")
    elif item.kind == "csr":
        lines += [
            f"{i2}Subject: {f['subject']}",
            f"{i2}Subject Public Key: {f['public_key']}",
            f"{i2}Signature Algorithm: {f['signature_algorithm']}",
        ]
        if f["extensions"]:
            lines.append(f"{i2}Requested Extensions:")
            lines += _ext_lines(f["extensions"], i3)
        lines.append(
            f"{i2}Signature: "
            + ("verify OK" if f["signature_valid"] else "verify FAILED (does not match its key)")
        )
    elif item.kind == "private-key":
        enc = "encrypted" if f["encrypted"] else "not encrypted"
        lines.append(f"{i2}Type: {f['type']} ({enc})")
    elif item.kind == "public-key":
        lines.append(f"{i2}Type: {f['type']}")
    elif item.kind == "crl":
        lines += [
            f"{i2}Issuer: {f['issuer']}",
            f"{i2}Signature Algorithm: {f['signature_algorithm']}",
            f"{i2}Last Update: {f['last_update']}",
            f"{i2}Next Update: {f['next_update'] or '(none)'}",
        ]
        if f["extensions"]:
            lines.append(f"{i2}CRL extensions:")
            lines += _ext_lines(f["extensions"], i3)
        if f["revoked"]:
            lines.append(f"{i2}Revoked Certificates:")
            for r in f["revoked"]:
                why = f" ({r['reason']})" if r["reason"] else ""
                lines.append(f"{i3}Serial {r['serial']}: {r['revoked_at']}{why}")
        else:
            lines.append(f"{i2}No Revoked Certificates.")
    elif item.kind == "pkcs12":
        lines.append(f"{i2}Password: {'yes' if f['password'] else 'none'}")
        lines += [render_text(c, i2) for c in item.children]
    return "\n".join(lines)
