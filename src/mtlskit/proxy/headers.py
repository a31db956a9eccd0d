"""The verified client's identity as HTTP request headers, and the headers a client may
never send through the proxy.

Every header in :data:`IDENTITY_HEADERS` is removed from each request, whatever its
case and with ``_`` for ``-`` (WSGI and CGI servers map both spellings to the same
``HTTP_X_FORWARDED_FOR``: nginx drops underscored names for that reason), then the
proxy adds its own, computed once per connection from the verified certificate:

``X-Forwarded-Client-Cert``
    Envoy's format: ``Hash=<sha256 hex>;Subject="CN=…";URI=…;DNS=…`` (fields chosen
    with ``--xfcc-fields`` from By, Hash, Cert, Chain, Subject, URI, DNS).
``Client-Cert`` / ``Client-Cert-Chain``
    RFC 9440: the certificate as a structured-field byte sequence ``:<base64 DER>:``,
    and the intermediates the client sent (leaf and root excluded), when there are any.
``X-Forwarded-For`` / ``Forwarded`` / ``X-Forwarded-Proto``
    the client's address (RFC 7239 for ``Forwarded``) and ``https``.
"""

from __future__ import annotations

import base64
import re
import ssl
from functools import lru_cache
from urllib.parse import quote

from cryptography import x509

from mtlskit.identity import PeerIdentity

__all__ = ["HOP_BY_HOP", "IDENTITY_HEADERS", "identity_headers", "normalized", "xfcc"]

IDENTITY_HEADERS = frozenset(
    {
        b"x-forwarded-client-cert",
        b"client-cert",
        b"client-cert-chain",
        b"x-forwarded-for",
        b"forwarded",
        b"x-forwarded-proto",
        b"x-real-ip",
    }
)

# RFC 9110 section 7.6.1, and the ones older software still sends.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def normalized(name: bytes) -> bytes:
    """A header name as compared here: lower case, ``_`` read as ``-``."""
    return name.lower().replace(b"_", b"-")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _xfcc_value(value: str, *, always_quote: bool = False) -> str:
    # A certificate's names may hold any character: control characters (CR LF would
    # start a new header) are written as RFC 4514 hex escapes.
    value = _CONTROL.sub(lambda m: f"\\{ord(m.group(0)):02X}", value)
    if always_quote or any(c in value for c in ',;="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


@lru_cache(maxsize=8)
def proxy_uri_sans(server_cert_pem: str) -> tuple[str, ...]:
    """The URI SANs of the proxy's own certificate (XFCC's ``By``), once per certificate."""
    if not server_cert_pem:
        return ()
    cert = x509.load_pem_x509_certificate(server_cert_pem.encode("ascii"))
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def xfcc(
    ident: PeerIdentity,
    chain_der: list[bytes],
    fields: tuple[str, ...],
    *,
    by: tuple[str, ...] = (),
) -> str:
    """One X-Forwarded-Client-Cert element in Envoy's format, fields in Envoy's order."""
    parts: list[str] = []
    for field in ("By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS"):
        if field not in fields:
            continue
        if field == "By":
            parts.extend(f"By={_xfcc_value(uri)}" for uri in by)
        elif field == "Hash":
            parts.append(f"Hash={ident.fingerprint_sha256}")
        elif field == "Cert" and chain_der:
            parts.append("Cert=" + quote(ssl.DER_cert_to_PEM_cert(chain_der[0]), safe=""))
        elif field == "Chain" and chain_der:
            pem = "".join(ssl.DER_cert_to_PEM_cert(d) for d in chain_der)
            parts.append("Chain=" + quote(pem, safe=""))
        elif field == "Subject":
            parts.append("Subject=" + _xfcc_value(ident.subject, always_quote=True))
        elif field == "URI":
            parts.extend(f"URI={_xfcc_value(u)}" for u in ident.sans_of("URI"))
        elif field == "DNS":
            parts.extend(f"DNS={_xfcc_value(d)}" for d in ident.sans_of("DNS"))
    return ";".join(parts)


def _self_signed(der: bytes) -> bool:
    cert = x509.load_der_x509_certificate(der)
    return cert.subject == cert.issuer


def _sf_binary(der: bytes) -> bytes:
    return b":" + base64.b64encode(der) + b":"


def identity_headers(
    ident: PeerIdentity,
    chain_der: list[bytes],
    client_ip: str | None,
    *,
    xfcc_fields: tuple[str, ...],
    by: tuple[str, ...] = (),
) -> bytes:
    """The header lines (``Name: value\\r\\n`` …) the proxy adds to every request."""
    lines = [b"X-Forwarded-Client-Cert: " + xfcc(ident, chain_der, xfcc_fields, by=by).encode()]
    if chain_der:
        lines.append(b"Client-Cert: " + _sf_binary(chain_der[0]))
        # RFC 9440 2.3: a trust anchor may be left out (the target has it); OpenSSL clients
        # send their root along unless told not to.
        issuers = [d for d in chain_der[1:] if not _self_signed(d)]
        if issuers:
            lines.append(b"Client-Cert-Chain: " + b", ".join(_sf_binary(d) for d in issuers))
    if client_ip:
        node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
        lines.append(b"X-Forwarded-For: " + client_ip.encode("ascii"))
        lines.append(b"Forwarded: for=" + node.encode("ascii") + b";proto=https")
    lines.append(b"X-Forwarded-Proto: https")
    return b"".join(line + b"\r\n" for line in lines)
