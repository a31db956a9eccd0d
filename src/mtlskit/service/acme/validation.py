"""Challenge validation for real: connect to the name and look (RFC 8555 8.3, RFC 8737, RFC 8738).

``http-01``: ``GET http://NAME:PORT/.well-known/acme-challenge/TOKEN`` must answer
200 with the key authorization. ``tls-alpn-01``: a TLS handshake with SNI NAME and
ALPN ``acme-tls/1`` must show a certificate whose only SAN is NAME and whose
critical acmeIdentifier extension holds SHA-256 of the key authorization.

Addresses come from ``--acme-resolve NAME:ADDR`` when given, else from the
system resolver; an ``ip`` identifier is its own address. Each check is bounded
in time and in what it reads; a failure is an :class:`AcmeProblem` of type
``dns``, ``connection``, ``tls``, ``unauthorized`` or ``incorrectResponse``.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Mapping

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from mtlskit.service.acme.policy import Identifier
from mtlskit.service.acme.problems import AcmeProblem

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ALPN_PROTOCOL",
    "CHALLENGE_TYPES",
    "resolve",
    "validate",
    "validate_http_01",
    "validate_tls_alpn_01",
]

CHALLENGE_TYPES = ("http-01", "tls-alpn-01")
ALPN_PROTOCOL = "acme-tls/1"
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier
TIMEOUT = 10.0
MAX_HTTP_BODY = 8192
MAX_ADDRESSES = 3  # tried in turn; keeps one validation well under a minute


def resolve(ident: Identifier, static: Mapping[str, str]) -> list[str]:
    """The addresses to connect to for ``ident``, IPv4 first."""
    if ident.type == "ip":
        return [ident.value]
    if ident.value in static:
        return [static[ident.value]]
    try:
        infos = socket.getaddrinfo(ident.value, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise AcmeProblem("dns", f"{ident.value} cannot be resolved: {exc}") from None
    seen: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            address = str(info[4][0])
            if info[0] == family and address not in seen:
                seen.append(address)
    if not seen:
        raise AcmeProblem("dns", f"{ident.value} has no address")
    return seen[:MAX_ADDRESSES]


def _connect(addresses: list[str], port: int, ident: Identifier) -> socket.socket:
    errors: list[str] = []
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=TIMEOUT)
        except OSError as exc:
            errors.append(f"{address}:{port}: {exc.strerror or exc}")
    raise AcmeProblem("connection", f"cannot connect to {ident.value} ({'; '.join(errors)})")


def _host_header(ident: Identifier, port: int) -> str:
    host = ident.value
    if ident.type == "ip" and ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return host if port == 80 else f"{host}:{port}"


def validate_http_01(
    ident: Identifier, token: str, key_authorization: str, *, port: int, addresses: list[str]
) -> None:
    """Fetch the key authorization over plain HTTP; return when it is right."""
    sock = _connect(addresses, port, ident)
    conn = http.client.HTTPConnection(_host_header(ident, port), port, timeout=TIMEOUT)
    conn.sock = sock  # connected above, to the address we chose
    path = f"/.well-known/acme-challenge/{token}"
    try:
        conn.request("GET", path, headers={"Host": _host_header(ident, port), "Accept": "*/*"})
        response = conn.getresponse()
        body = response.read(MAX_HTTP_BODY + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise AcmeProblem(
            "connection", f"http://{_host_header(ident, port)}{path}: {exc}"
        ) from None
    finally:
        conn.close()
    where = f"http://{_host_header(ident, port)}{path}"
    if response.status != 200:
        raise AcmeProblem(
            "unauthorized", f"{where} answered {response.status} {response.reason}, not 200"
        )
    if len(body) > MAX_HTTP_BODY:
        raise AcmeProblem("unauthorized", f"{where} answered more than {MAX_HTTP_BODY} bytes")
    # RFC 8555 8.3: the server verifies the body after stripping trailing whitespace.
    got = body.decode("ascii", "replace").strip()
    if got != key_authorization:
        shown = got if len(got) <= 120 else got[:120] + "…"
        raise AcmeProblem(
            "incorrectResponse",
            f"{where} answered {shown!r}, not the key authorization {key_authorization!r}",
        )


def tls_alpn_sni(ident: Identifier) -> str:
    """The SNI for tls-alpn-01: the name, or the reverse-DNS name of an IP (RFC 8738 section 6)."""
    if ident.type == "ip":
        return ipaddress.ip_address(ident.value).reverse_pointer
    return ident.value


def _alpn_context() -> ssl.SSLContext:
    # The certificate of a tls-alpn-01 responder is self-signed by design (RFC 8737
    # section 3): what proves control is its acmeIdentifier extension, checked below.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ALPN_PROTOCOL])
    return ctx


def validate_tls_alpn_01(
    ident: Identifier, key_authorization: str, *, port: int, addresses: list[str]
) -> None:
    """Handshake with ALPN acme-tls/1 and check the certificate the responder shows."""
    sock = _connect(addresses, port, ident)
    sni = tls_alpn_sni(ident)
    where = f"{ident.value} port {port}"
    try:
        with _alpn_context().wrap_socket(sock, server_hostname=sni) as tls:
            protocol = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise AcmeProblem("tls", f"TLS handshake with {where} failed: {exc}") from None
    if protocol != ALPN_PROTOCOL:
        raise AcmeProblem(
            "tls", f"{where} did not negotiate ALPN {ALPN_PROTOCOL} (got {protocol!r})"
        )
    if not der:
        raise AcmeProblem("tls", f"{where} sent no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound as exc:
        raise AcmeProblem("unauthorized", f"{where}: the certificate lacks {exc}") from None
    except ValueError as exc:
        raise AcmeProblem("tls", f"{where}: the certificate cannot be read: {exc}") from None
    if sans != [ident.general_name]:
        raise AcmeProblem(
            "unauthorized",
            f"{where}: the certificate must name exactly {ident.value} in its SANs",
        )
    if not ext.critical:
        raise AcmeProblem("unauthorized", f"{where}: the acmeIdentifier extension is not critical")
    expected = hashlib.sha256(key_authorization.encode()).digest()
    # The extension's value is an ASN.1 OCTET STRING of the 32-byte digest.
    value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    if value != b"\x04\x20" + expected:
        raise AcmeProblem(
            "incorrectResponse", f"{where}: the acmeIdentifier does not match the key authorization"
        )


def validate(
    kind: str,
    ident: Identifier,
    token: str,
    key_authorization: str,
    *,
    http_port: int,
    tls_port: int,
    static: Mapping[str, str],
) -> None:
    """Validate one challenge; return when it passes, else raise the problem found."""
    addresses = resolve(ident, static)
    if kind == "http-01":
        validate_http_01(ident, token, key_authorization, port=http_port, addresses=addresses)
    elif kind == "tls-alpn-01":
        validate_tls_alpn_01(ident, key_authorization, port=tls_port, addresses=addresses)
    else:  # pragma: no cover - challenges are only ever made of CHALLENGE_TYPES
        raise AcmeProblem("malformed", f"unknown challenge type {kind}")
