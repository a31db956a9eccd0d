"""One mTLS connection to a server, and every way it fails, in plain words.

:func:`open_connection` parses the URL, finds the client's files, builds the
context with :func:`mtlskit.tls.client_context`, connects and handshakes;
:mod:`mtlskit.client` speaks HTTP over the result. Every socket and ssl error on
the way becomes an error of :mod:`mtlskit.errors` in ONE place, :func:`map_errors`,
by the stage it happened in: ``connect`` (TCP), ``handshake`` (TLS) or ``exchange``
(the HTTP request and its answer; the client raises ProtocolError itself for an
answer that is not HTTP, and :meth:`Connection.closed_without_answer` for none).

cryptography is imported inside the functions that explain a failure, not at the
top: a request that succeeds never loads it (start-up time of ``mtlskit get``).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from mtlskit.errors import (
    CertificateRefusedError,
    ConfigError,
    ConnectError,
    ConnectTimeout,
    HandshakeError,
    MtlsError,
    NameResolutionError,
    NetworkError,
    PeerVerificationError,
    PKIError,
    ProtocolError,
    ReadTimeout,
    Setting,
)
from mtlskit.tls import client_context

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "ClientFiles",
    "Connection",
    "Peer",
    "Stage",
    "Target",
    "ascii_host",
    "find_client_files",
    "map_errors",
    "open_connection",
    "parse_target",
    "ssl_name",
]

PathLike = str | os.PathLike[str]
Stage = Literal["connect", "handshake", "exchange"]


# ---------------------------------------------------------------- files


class ClientFiles:
    """The CA file to trust, and our certificate and key files (``None``: no client
    certificate; ``key=None`` with a certificate: the key is in the same PEM)."""

    __slots__ = ("ca", "cert", "key")

    def __init__(self, ca: str, cert: str | None, key: str | None) -> None:
        self.ca = ca
        self.cert = cert
        self.key = key


def find_client_files(
    certs: PathLike | None, ca: PathLike | None, cert: PathLike | None, key: PathLike | None
) -> ClientFiles:
    """The files to use: the seed's layout in ``certs`` (``ca.crt``, ``client.crt``,
    ``client.key``), each overridden by ``ca``/``cert``/``key``; ``certs=None``
    without ``cert`` means no client certificate."""
    folder = os.fspath(certs) if certs is not None else None
    if ca is not None:
        ca_path = os.fspath(ca)
    elif folder is not None:
        ca_path = os.path.join(folder, "ca.crt")
    else:
        raise ConfigError(
            "no CA to trust",
            hint=("pass ", Setting("certs", "DIR"), " or ", Setting("ca", "FILE")),
        )
    cert_path = os.fspath(cert) if cert is not None else None
    if cert_path is None and folder is not None:
        cert_path = os.path.join(folder, "client.crt")
    key_path = os.fspath(key) if key is not None else None
    if key_path is None and cert is None and folder is not None:
        key_path = os.path.join(folder, "client.key")
    elif key_path is None and cert is not None:
        # The seed's layout keeps NAME.key next to NAME.crt; else the key is in the same PEM.
        beside = os.path.splitext(os.fspath(cert))[0] + ".key"
        key_path = beside if os.path.isfile(beside) else None
    checks = [(ca_path, "CA certificate", "ca"), (cert_path, "client certificate", "cert")]
    checks.append((key_path, "client key", "key"))
    for path, what, role in checks:
        if path is not None and not os.path.isfile(path):
            raise PKIError(
                f"{what} not found",
                file=path,
                hint=(
                    "run mtlskit init, or point ",
                    Setting("certs"),
                    " or ",
                    Setting(role),
                    " at it",
                ),
            )
    return ClientFiles(ca_path, cert_path, key_path)


# ---------------------------------------------------------------- names


_SHORT = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "emailAddress",
    "serialNumber": "serialNumber",
    "domainComponent": "DC",
}


def ssl_name(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """An ``ssl`` name tuple as ``C=TH, O=Dev, CN=x`` (like mtlskit.pki.names.format_name)."""
    parts = [f"{_SHORT.get(k, k)}={v}" for rdn in rdns for k, v in rdn]
    return ", ".join(parts) or "(empty)"


# ---------------------------------------------------------------- URL


class Target:
    """Where a URL points: the name to check in the certificate, and where to connect."""

    __slots__ = ("connect_host", "host", "path", "port", "url")

    def __init__(self, url: str, host: str, port: int, path: str, connect_host: str) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.path = path
        self.connect_host = connect_host

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: str, resolve: str | None) -> Target:
    """The URL's host, port and path; ``resolve`` is curl's ``HOST:PORT:ADDRESS``."""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ConfigError(
            f"unsupported URL scheme {parts.scheme!r} in {url}", hint="mTLS needs https://"
        )
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise ConfigError(f"invalid port in {url}", hint="e.g. https://localhost:8443") from exc
    hostname = parts.hostname or ""
    if not hostname:
        raise ConfigError(f"no host in {url}", hint="e.g. https://localhost:8443")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c <= " " or c == "\x7f" for c in path):
        raise ConfigError(
            f"the URL {url!r} has spaces or control characters in its path",
            hint="percent-encode them (a space is %20)",
        )
    if not path.isascii():
        raise ConfigError(
            f"the URL {url!r} has non-ASCII characters in its path",
            hint="percent-encode their UTF-8 bytes (é is %C3%A9)",
        )
    connect = hostname
    if resolve:
        name, _, rest = resolve.partition(":")
        rport, _, addr = rest.partition(":")
        if not name or not rport or not addr:
            raise ConfigError(
                ("invalid ", Setting("resolve", repr(resolve))), hint="use HOST:PORT:ADDRESS"
            )
        if name.lower() == hostname.lower() and rport in ("*", str(port)):
            connect = addr.strip("[]")
    return Target(url, hostname, port, path, connect)


def ascii_host(host: str) -> str | bytes:
    """An ASCII host name as bytes, which getaddrinfo() and ssl take without the idna
    codec (encodings.idna, stringprep, unicodedata: several ms of start-up); for an
    ASCII name the idna encoding is the name itself."""
    return host.encode("ascii") if host.isascii() else host


# ---------------------------------------------------------------- the peer


class Peer:
    """The server we talk to, and how: what an explanation of a failure needs."""

    __slots__ = ("context", "files", "target", "timeout")

    def __init__(
        self, target: Target, files: ClientFiles | None, context: ssl.SSLContext, timeout: float
    ) -> None:
        self.target = target
        self.files = files  # None: the caller gave the context, we cannot name files
        self.context = context
        self.timeout = timeout


class Connection:
    """A TLS connection after a verified handshake."""

    __slots__ = ("peer", "tls", "tls_version")

    def __init__(self, peer: Peer, tls: ssl.SSLSocket) -> None:
        self.peer = peer
        self.tls = tls
        self.tls_version = tls.version() or ""

    def closed_without_answer(self) -> MtlsError:
        """The error for a server that closed before the first byte of its answer: with
        TLS 1.3, how a server may refuse our certificate (then said so)."""
        return _closed_without_answer(self.peer, self.tls_version)

    @contextmanager
    def map_errors(self) -> Iterator[None]:
        """Errors while sending the request or reading its answer, in mtlskit's words."""
        with map_errors("exchange", self.peer, self.tls_version):
            yield


def open_connection(
    url: str,
    *,
    certs: PathLike | None,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float,
    resolve: str | None = None,
) -> Connection:
    """Connect to ``url`` and complete a verified TLS handshake, or raise MtlsError.

    Trust and the client certificate come from ``context`` when given, else from
    the seed layout in ``certs`` (``ca``/``cert``/``key`` override single files).
    """
    target = parse_target(url, resolve)
    files: ClientFiles | None = None
    if context is None:
        files = find_client_files(certs, ca, cert, key)
        context = client_context(files.ca, files.cert, files.key)
    if timeout <= 0:
        raise ConfigError(
            f"timeout must be positive, not {timeout:g}", hint=("e.g. ", Setting("timeout", "10"))
        )
    peer = Peer(target, files, context, timeout)
    with map_errors("connect", peer):
        host = ascii_host(target.connect_host)  # getaddrinfo takes bytes; typeshed says str
        raw = socket.create_connection((host, target.port), timeout=timeout)  # type: ignore[arg-type]
    try:
        # Nagle's algorithm would hold the request back until the server ACKs our
        # last handshake flight, which a delayed ACK postpones by ~40 ms on a fresh
        # TLS 1.3 connection; httpx (httpcore) and curl turn it off too.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with map_errors("handshake", peer):
            tls = context.wrap_socket(raw, server_hostname=ascii_host(target.host))
    except BaseException:
        raw.close()
        raise
    return Connection(peer, tls)


# ---------------------------------------------------------------- the one mapping


@contextmanager
def map_errors(stage: Stage, peer: Peer, tls_version: str = "") -> Iterator[None]:
    """Turn an error of the socket or ssl met in ``stage`` into an error of
    :mod:`mtlskit.errors` (the tree by stage); errors that are not theirs pass through."""
    try:
        yield
    except MtlsError:
        raise
    except Exception as exc:
        failure = _explain(stage, exc, peer, tls_version)
        if failure is None:
            raise
        raise failure from exc


_RAISE_TIMEOUT = ("raise the timeout (", Setting("timeout"), ")")


def _explain(stage: Stage, exc: Exception, peer: Peer, tls_version: str) -> MtlsError | None:
    where, seconds = peer.target.where, f"{peer.timeout:g} s"
    if stage == "connect":
        if isinstance(exc, ConnectionRefusedError):
            return ConnectError(
                f"connection refused by {where}", hint="is the server running (mtlskit serve)?"
            )
        if isinstance(exc, socket.gaierror):
            return NameResolutionError(
                f"cannot resolve {peer.target.connect_host!r}: {exc.strerror}",
                hint="check the host name in the URL",
            )
        if isinstance(exc, TimeoutError):
            return ConnectTimeout(
                f"no connection to {where} within {seconds}",
                hint=("check the address and port, or ", *_RAISE_TIMEOUT),
            )
        if isinstance(exc, OSError):
            return ConnectError(
                f"cannot connect to {where}: {exc.strerror or exc}",
                hint="check the address and port",
            )
        return None
    if stage == "handshake":
        if isinstance(exc, ssl.SSLCertVerificationError):
            return _verify_failed(exc, peer)
        if isinstance(exc, ssl.SSLError):
            return _handshake_failed(exc, peer)
        if isinstance(exc, TimeoutError):
            return ConnectTimeout(
                f"no TLS handshake with {where} within {seconds}",
                hint=("check that the port serves TLS, or ", *_RAISE_TIMEOUT),
            )
        if isinstance(exc, OSError):
            return HandshakeError(
                f"{where} closed the connection during the TLS handshake ({exc.strerror or exc})",
                hint="check that it is a TLS server and accepts TLS ≥ 1.2",
            )
        return None
    # The exchange: with TLS 1.3 the server judges our certificate after our side
    # of the handshake is done, so its refusal is an alert on the first read.
    if isinstance(exc, ssl.SSLError):
        refused = _refused(exc, peer.files)
        if refused is not None:
            return refused
        if isinstance(exc, ssl.SSLEOFError):
            return _closed_without_answer(peer, tls_version)
        return HandshakeError(
            f"TLS error from {where} ({_alert_words(exc)})", hint="check the server's log"
        )
    if isinstance(exc, TimeoutError):
        return ReadTimeout(
            f"no response from {where} within {seconds}",
            hint=("check the server's log, or ", *_RAISE_TIMEOUT),
        )
    if isinstance(exc, ConnectionError):
        return _closed_without_answer(peer, tls_version)
    if isinstance(exc, OSError):
        return NetworkError(
            f"connection to {where} failed: {exc.strerror or exc}", hint="try again"
        )
    return None


# ---------------------------------------------------------------- explanations


# OpenSSL's names for the alerts a server sends when it will not take our certificate.
_REFUSAL_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "",
    "SSLV3_ALERT_BAD_CERTIFICATE": "",
    "TLSV1_ALERT_UNKNOWN_CA": "",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "it must be a client certificate (extendedKeyUsage "
    "clientAuth): mtlskit issue client",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired: renew it (mtlskit renew)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it was revoked: issue a new one (mtlskit issue client)",
    "TLSV1_ALERT_ACCESS_DENIED": "the server does not allow this identity",
}

_SEND_A_CERTIFICATE = (
    "pass ",
    Setting("cert"),
    " and ",
    Setting("key"),
    ", or ",
    Setting("certs", "DIR"),
    " with client.crt and client.key",
)


def _alert_words(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    return reason.lower().replace("_", " ") if reason else str(exc)


def _refused(exc: ssl.SSLError, files: ClientFiles | None) -> MtlsError | None:
    reason = getattr(exc, "reason", None) or ""
    if reason not in _REFUSAL_ALERTS:
        return None
    words = _alert_words(exc)
    if files is not None and files.cert is None:
        return CertificateRefusedError(
            f"the server requires a client certificate and we sent none ({words})",
            hint=_SEND_A_CERTIFICATE,
        )
    cert = files.cert if files else None
    hint = (
        _REFUSAL_ALERTS[reason]
        or _why_refused(cert, files.ca if files else None)
        or ("use a client certificate issued by the CA the server trusts (mtlskit issue client)")
    )
    return CertificateRefusedError(
        f"the server refused our client certificate ({words})", file=cert, hint=hint
    )


def _why_refused(cert: str | None, ca: str | None) -> str | None:
    """Look at our own certificate for the likely reason a server refused it."""
    if cert is None:
        return None
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from mtlskit.pki.names import authority_key_id, format_name, key_id

    try:
        with open(cert, "rb") as f:
            ours = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return None
    if ours.not_valid_after_utc < dt.datetime.now(dt.UTC):
        return f"it expired on {ours.not_valid_after_utc:%Y-%m-%d}: renew it (mtlskit renew)"
    try:
        usages = ours.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return (
            "it is not a client certificate (extendedKeyUsage has no clientAuth): "
            "mtlskit issue client"
        )
    issuer = repr(format_name(ours.issuer))
    # Two CAs made alike have the same name: tell them apart by their keys.
    alike = [c for c in _read_certificates(ca) if c.subject == ours.issuer]
    theirs = authority_key_id(ours)
    if alike and all(key_id(c) != theirs for c in alike):
        issuer += (
            f" ({theirs or 'key unknown'}; the CA of that name we trust has "
            f"{key_id(alike[0])}: another CA with the same name)"
        )
    return (
        f"the server does not trust its issuer {issuer}: use a client "
        "certificate from the CA the server trusts (mtlskit issue client)"
    )


def _read_certificates(path: str | None) -> list[x509.Certificate]:
    """The certificates in ``path`` to explain a failure; none when it cannot be read."""
    from mtlskit.pki.load import read_certificates

    if path is None:
        return []
    try:
        return read_certificates(path)
    except MtlsError:
        return []


def _fetch_peer_certificate(peer: Peer) -> x509.Certificate | None:
    """The server's leaf certificate, fetched WITHOUT verification, to explain a failure."""
    from cryptography import x509

    target, files = peer.target, peer.files
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        # Present our certificate too: a TLS 1.2 server that requires one would
        # otherwise end the handshake before we could look at its certificate.
        if files is not None and files.cert is not None:
            probe.load_cert_chain(files.cert, files.key)
        address = (target.connect_host, target.port)
        with (
            socket.create_connection(address, timeout=peer.timeout) as raw,
            probe.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _trusted_names(ctx: ssl.SSLContext) -> list[str]:
    subjects: list[Any] = [c.get("subject", ()) for c in ctx.get_ca_certs()]
    return [ssl_name(s) for s in subjects]


def _verify_failed(exc: ssl.SSLCertVerificationError, peer: Peer) -> MtlsError:
    from mtlskit.pki.names import authority_key_id, format_name, key_id, san_strings

    code = exc.verify_code
    message = exc.verify_message or str(exc)
    leaf = _fetch_peer_certificate(peer)
    host = peer.target.host
    ca_file = peer.files.ca if peer.files else None
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        names = ", ".join(san_strings(leaf)) if leaf is not None else ""
        return PeerVerificationError(
            f"the server's certificate is not valid for {host!r}: "
            + (f"it names {names}" if names else "it has no subject alternative names"),
            hint=(
                "use one of its names in the URL (or ",
                Setting("resolve", "NAME:PORT:ADDRESS"),
                "), or re-issue the server certificate with this name",
            ),
        )
    if code in (2, 18, 19, 20, 21):  # the issuer is not among the CAs we trust
        trusted = _trusted_names(peer.context)
        if leaf is None:
            what = f"the server's certificate is not trusted ({message})"
        elif code == 18 or leaf.issuer == leaf.subject:
            what = f"the server's certificate is self-signed ({format_name(leaf.subject)!r})"
        else:
            issuer = format_name(leaf.issuer)
            if issuer in trusted:
                alike = [c for c in _read_certificates(ca_file) if c.subject == leaf.issuer]
                theirs = authority_key_id(leaf) or "key unknown"
                ours = f", ours has {key_id(alike[0])}" if alike else ""
                what = (
                    "the server's certificate is not trusted: it was issued by another CA "
                    f"that is also named {issuer!r} ({theirs}{ours})"
                )
            else:
                we = " or ".join(repr(n) for n in trusted) or "no CA"
                what = (
                    f"the server's certificate is not trusted: it was issued by {issuer!r}, "
                    f"and we trust {we}"
                )
        return PeerVerificationError(
            what,
            file=ca_file,
            hint=(
                "pass ",
                Setting("ca"),
                " with the CA that issued it, or give the server a certificate from our CA",
            ),
        )
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        when = f" on {leaf.not_valid_after_utc:%Y-%m-%d}" if leaf is not None else ""
        return PeerVerificationError(
            f"the server's certificate expired{when}",
            hint="renew it on the server (mtlskit renew), then restart the server",
        )
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return PeerVerificationError(
            "the server's certificate is not valid yet", hint="check both machines' clocks"
        )
    if code == 26:  # X509_V_ERR_INVALID_PURPOSE
        return PeerVerificationError(
            "the server's certificate is not for TLS servers (no extendedKeyUsage serverAuth)",
            hint="issue it with the server profile (mtlskit issue server)",
        )
    return PeerVerificationError(
        f"the server's certificate does not verify: {message}",
        file=ca_file,
        hint="inspect it with mtlskit verify",
    )


def _handshake_failed(exc: ssl.SSLError, peer: Peer) -> MtlsError:
    refused = _refused(exc, peer.files)
    if refused is not None:
        return refused
    where = peer.target.where
    reason = getattr(exc, "reason", None) or ""
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        # An OpenSSL server answers a missing client certificate this way in TLS 1.2.
        if peer.files is not None and peer.files.cert is None:
            return CertificateRefusedError(
                f"the server requires a client certificate and we sent none ({_alert_words(exc)})",
                hint=_SEND_A_CERTIFICATE,
            )
        return HandshakeError(
            f"TLS handshake with {where} failed ({_alert_words(exc)})",
            hint="the server may require a client certificate we did not send, or share no "
            "TLS version or cipher with us",
        )
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return HandshakeError(
            f"{where} does not speak TLS ({_alert_words(exc)})",
            hint="check the port: this client talks to https:// servers only",
        )
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return HandshakeError(
            f"{where} closed the connection during the TLS handshake",
            hint="check that it is a TLS server and accepts TLS ≥ 1.2",
        )
    return HandshakeError(
        f"TLS handshake with {where} failed ({_alert_words(exc)})",
        hint="check that the server accepts TLS ≥ 1.2 and requires a certificate from our CA",
    )


def _server_verdict(peer: Peer) -> ssl.SSLError | None:
    """Handshake again and read before writing, to catch the alert a refusal sends.

    After a TLS 1.3 handshake the server checks our certificate while our request
    is already on its way; it then closes with that request unread, the kernel
    answers with a reset, and the alert is lost. On a fresh connection where we
    only read, the alert arrives intact.
    """
    target = peer.target
    try:
        with (
            socket.create_connection((target.connect_host, target.port), peer.timeout) as raw,
            peer.context.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            tls.settimeout(min(peer.timeout, 2.0))
            tls.recv(1)
    except ssl.SSLError as exc:
        return exc
    except (OSError, ValueError):
        return None
    return None


def _closed_without_answer(peer: Peer, tls_version: str) -> MtlsError:
    where = peer.target.where
    if tls_version == "TLSv1.3":
        verdict = _server_verdict(peer)
        refused = _refused(verdict, peer.files) if verdict is not None else None
        if refused is not None:
            return refused
        return ProtocolError(
            f"{where} closed the connection without answering",
            file=peer.files.cert if peer.files else None,
            hint="with TLS 1.3 this is how a server may refuse a client certificate: check "
            "the server's log, and that ours is issued by the CA it trusts",
        )
    return ProtocolError(
        f"{where} closed the connection without answering", hint="check the server's log"
    )
