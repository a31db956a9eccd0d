"""The mTLS client: :func:`get` / :func:`request`, and SSLContext helpers for other libraries.

:func:`request` speaks HTTP/1.1 with the stdlib (``http.client`` over a context from
:func:`mtlskit.tls.client_context`) and turns every failure into one
:class:`~mtlskit.errors.MtlsError` that says what went wrong and what to do next::

    from mtlskit.client import get
    r = get("https://localhost:8443", certs="certs")   # the seed client's defaults
    print(r.status, r.text, r.peer.subject if r.peer else None)

The same context works in httpx, requests/urllib3 and aiohttp (real handshakes in
``tests/test_client_libs.py``)::

    ctx = mtlskit.client.ssl_context("certs")           # ca.crt + client.crt + client.key
    httpx.get(url, verify=ctx)                          # not verify="ca.crt", cert=...:
                                                        # httpx 0.28 drops cert= then
    requests_session(ctx).get(url)                      # MtlsAdapter(ctx) on a Session
    async with aiohttp.ClientSession() as s:
        await s.get(url, ssl=ctx)

Imports stay light (no cryptography unless a failure needs explaining), so
``mtlskit get`` starts quickly.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlskit.errors import ConfigError, HandshakeError, MtlsError, PKIError, VerificationError
from mtlskit.tls import client_context

if TYPE_CHECKING:
    import http.client

    from cryptography import x509
    from requests import Session
    from requests.adapters import HTTPAdapter

    MtlsAdapter: type[HTTPAdapter]

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "MtlsAdapter",
    "PeerCertificate",
    "Response",
    "get",
    "request",
    "requests_session",
    "ssl_context",
]

DEFAULT_URL = "https://localhost:8443"
DEFAULT_CERTS = "certs"
DEFAULT_TIMEOUT = 30.0

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class PeerCertificate:
    """A summary of the server's verified certificate."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: str
    not_after: str
    serial: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "serial": self.serial,
        }


@dataclass(frozen=True)
class Response:
    """One HTTP response, read whole, and how the TLS session looked."""

    url: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    tls_version: str
    cipher: str
    peer: PeerCertificate | None

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called ``name`` (any case)."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), default)

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def as_dict(self) -> dict[str, Any]:
        """What ``mtlskit get --json`` prints; repeated headers are joined with ", "."""
        headers: dict[str, str] = {}
        for k, v in self.headers:
            key = k.lower()
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        return {
            "url": self.url,
            "status": self.status,
            "reason": self.reason,
            "headers": headers,
            "body": self.text,
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "peer_certificate": self.peer.as_dict() if self.peer else None,
        }


# ---------------------------------------------------------------- contexts


@dataclass(frozen=True)
class _Files:
    ca: Path
    cert: Path | None
    key: Path | None


def _files(
    certs: PathLike | None, ca: PathLike | None, cert: PathLike | None, key: PathLike | None
) -> _Files:
    """The files to use; ``certs=None`` without ``cert`` means no client certificate."""
    folder = Path(certs) if certs is not None else None
    if ca is not None:
        ca_path = Path(ca)
    elif folder is not None:
        ca_path = folder / "ca.crt"
    else:
        raise ConfigError("no CA to trust", hint="pass certs=DIR or ca=FILE")
    cert_path = Path(cert) if cert is not None else (folder / "client.crt" if folder else None)
    key_path = Path(key) if key is not None else None
    if key_path is None and cert is None and folder is not None:
        key_path = folder / "client.key"
    elif key_path is None and cert is not None:
        # The seed's layout keeps NAME.key next to NAME.crt; else the key is in the same PEM.
        beside = Path(cert).with_suffix(".key")
        key_path = beside if beside.is_file() else None
    checks = [(ca_path, "CA certificate", "--cacert"), (cert_path, "client certificate", "--cert")]
    checks.append((key_path, "client key", "--key"))
    for path, what, flag in checks:
        if path is not None and not path.is_file():
            raise PKIError(
                f"{what} not found",
                file=path,
                hint=f"run mtlskit init, or point --certs or {flag} at it",
            )
    return _Files(ca_path, cert_path, key_path)


def ssl_context(
    certs: PathLike | None = DEFAULT_CERTS,
    *,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """A client context from the seed's layout: ``certs/ca.crt``, ``client.crt``, ``client.key``.

    ``ca``/``cert``/``key`` override single files. The result is a plain
    :class:`ssl.SSLContext` (TLS ≥ 1.2, server certificate and host name checked)
    for :func:`request`, httpx (``verify=ctx``), requests (:func:`requests_session`)
    or aiohttp (``ssl=ctx``).
    """
    files = _files(certs, ca, cert, key)
    return client_context(files.ca, files.cert, files.key, password=password)


def _adapter_class() -> type[HTTPAdapter]:
    from requests.adapters import HTTPAdapter

    class MtlsAdapter(HTTPAdapter):
        """A requests adapter that uses one SSLContext for trust and the client certificate.

        requests' own ``cert_verify`` points every connection at a CA bundle (certifi,
        or REQUESTS_CA_BUNDLE / ``verify=<path>``), and urllib3 then loads it *into*
        the context it was given (``ssl_wrap_socket`` calls ``load_verify_locations``):
        a private-CA context would silently start trusting every public CA. So trust
        comes from the context alone: bundles are never loaded, and ``verify=False``
        or ``cert=`` (which cannot be honoured) raise ConfigError.
        """

        def __init__(self, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
            self.ssl_context = ssl_context
            super().__init__(**kwargs)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = self.ssl_context
            super().init_poolmanager(*args, **kwargs)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            kwargs["ssl_context"] = self.ssl_context
            return super().proxy_manager_for(proxy, **kwargs)

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("verify") is False or kwargs.get("cert") is not None:
                raise ConfigError(
                    "MtlsAdapter takes trust and the client certificate from its SSLContext",
                    hint="drop verify=False / cert=; build the context with "
                    "mtlskit.client.ssl_context()",
                )
            return super().send(request, *args, **kwargs)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            conn.cert_reqs = "CERT_REQUIRED"
            conn.ca_certs = None
            conn.ca_cert_dir = None

    return MtlsAdapter


_ADAPTER: type[HTTPAdapter] | None = None


def __getattr__(name: str) -> Any:
    # MtlsAdapter subclasses requests' HTTPAdapter: build it on first use, so that
    # importing mtlskit.client does not import requests.
    global _ADAPTER
    if name == "MtlsAdapter":
        if _ADAPTER is None:
            _ADAPTER = _adapter_class()
        return _ADAPTER
    raise AttributeError(f"module 'mtlskit.client' has no attribute {name!r}")


def requests_session(
    context: ssl.SSLContext | None = None, *, certs: PathLike | None = DEFAULT_CERTS
) -> Session:
    """A :class:`requests.Session` whose https:// requests use ``context`` (mTLS).

    Without ``context``, one is made from ``certs`` with :func:`ssl_context`.
    """
    import requests

    session = requests.Session()
    adapter: HTTPAdapter = __getattr__("MtlsAdapter")(context or ssl_context(certs))
    session.mount("https://", adapter)
    return session


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
_SAN_KIND = {"DNS": "DNS", "IP Address": "IP", "email": "email", "URI": "URI"}


def _ssl_name(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """An ``ssl`` name tuple as ``C=TH, O=Dev, CN=x`` (like mtlskit.pki.names.format_name)."""
    parts = [f"{_SHORT.get(k, k)}={v}" for rdn in rdns for k, v in rdn]
    return ", ".join(parts) or "(empty)"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _iso(ssl_time: str) -> str:
    """``Nov  7 07:38:02 2027 GMT`` (OpenSSL's form, always GMT) as ``2027-11-07T07:38:02Z``.

    By hand: ssl.cert_time_to_seconds() would import _strptime on every request.
    """
    try:
        month, day, clock, year, _zone = ssl_time.split()
        return f"{year}-{_MONTHS.index(month) + 1:02d}-{int(day):02d}T{clock}Z"
    except ValueError:
        return ssl_time


def _peer_summary(cert: Mapping[str, Any] | None) -> PeerCertificate | None:
    if not cert:
        return None
    sans = tuple(
        f"{_SAN_KIND.get(kind, kind)}:{str(value).rstrip()}"
        for kind, value in cert.get("subjectAltName", ())
    )
    return PeerCertificate(
        subject=_ssl_name(cert.get("subject", ())),
        issuer=_ssl_name(cert.get("issuer", ())),
        sans=sans,
        not_before=_iso(cert["notBefore"]),
        not_after=_iso(cert["notAfter"]),
        serial=str(cert.get("serialNumber", "")),
    )


# ---------------------------------------------------------------- URL, errors


@dataclass(frozen=True)
class _Target:
    url: str
    host: str
    port: int
    path: str
    connect_host: str

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _ascii(host: str) -> str | bytes:
    """An ASCII host name as bytes, which getaddrinfo() and ssl take without the idna
    codec (encodings.idna, stringprep, unicodedata: several ms of start-up); for an
    ASCII name the idna encoding is the name itself."""
    return host.encode("ascii") if host.isascii() else host


def _target(url: str, resolve: str | None) -> _Target:
    from urllib.parse import urlsplit

    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ConfigError(
            f"unsupported URL scheme {parts.scheme!r} in {url}",
            hint="mTLS needs https://",
        )
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise ConfigError(f"invalid port in {url}", hint="e.g. https://localhost:8443") from exc
    if not parts.hostname:
        raise ConfigError(f"no host in {url}", hint="e.g. https://localhost:8443")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if any(c <= " " or c == "\x7f" for c in path):
        raise ConfigError(
            f"the URL {url!r} has spaces or control characters in its path",
            hint="percent-encode them (a space is %20)",
        )
    connect = parts.hostname
    if resolve:
        name, _, rest = resolve.partition(":")
        rport, _, addr = rest.partition(":")
        if not name or not rport or not addr:
            raise ConfigError(f"invalid --resolve {resolve!r}", hint="use HOST:PORT:ADDRESS")
        if name.lower() == parts.hostname.lower() and rport in ("*", str(port)):
            connect = addr.strip("[]")
    return _Target(url, parts.hostname, port, path, connect)


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


def _alert_words(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    return reason.lower().replace("_", " ") if reason else str(exc)


def _refused(exc: ssl.SSLError, files: _Files | None) -> MtlsError | None:
    reason = getattr(exc, "reason", None) or ""
    if reason not in _REFUSAL_ALERTS:
        return None
    words = _alert_words(exc)
    cert = files.cert if files else None
    if files is not None and cert is None:
        return HandshakeError(
            f"the server requires a client certificate and we sent none ({words})",
            hint="pass --cert and --key, or --certs DIR with client.crt and client.key",
        )
    hint = (
        _REFUSAL_ALERTS[reason]
        or _why_refused(cert)
        or ("use a client certificate issued by the CA the server trusts (mtlskit issue client)")
    )
    return HandshakeError(
        f"the server refused our client certificate ({words})", file=cert, hint=hint
    )


def _why_refused(cert: Path | None) -> str | None:
    """Look at our own certificate for the likely reason a server refused it."""
    if cert is None:
        return None
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from mtlskit.pki.names import format_name

    try:
        ours = x509.load_pem_x509_certificate(cert.read_bytes())
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
    return (
        f"the server does not trust its issuer {format_name(ours.issuer)!r}: use a client "
        "certificate from the CA the server trusts (mtlskit issue client)"
    )


def _fetch_peer_certificate(
    target: _Target, files: _Files | None, timeout: float
) -> x509.Certificate | None:
    """The server's leaf certificate, fetched WITHOUT verification, to explain a failure."""
    from cryptography import x509

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        # Present our certificate too: a TLS 1.2 server that requires one would
        # otherwise end the handshake before we could look at its certificate.
        if files is not None and files.cert is not None:
            probe.load_cert_chain(files.cert, files.key)
        with (
            socket.create_connection((target.connect_host, target.port), timeout=timeout) as raw,
            probe.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _trusted_names(ctx: ssl.SSLContext) -> list[str]:
    subjects: list[Any] = [c.get("subject", ()) for c in ctx.get_ca_certs()]
    return [_ssl_name(s) for s in subjects]


def _verify_failed(
    exc: ssl.SSLCertVerificationError,
    target: _Target,
    ctx: ssl.SSLContext,
    files: _Files | None,
    timeout: float,
) -> MtlsError:
    from mtlskit.pki.names import format_name, san_strings

    code = exc.verify_code
    message = exc.verify_message or str(exc)
    leaf = _fetch_peer_certificate(target, files, timeout)
    ca_file = files.ca if files else None
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        names = ", ".join(san_strings(leaf)) if leaf is not None else ""
        return VerificationError(
            f"the server's certificate is not valid for {target.host!r}: "
            + (f"it names {names}" if names else "it has no subject alternative names"),
            hint="use one of its names in the URL (or --resolve NAME:PORT:ADDRESS), "
            "or re-issue the server certificate with this name",
        )
    if code in (2, 18, 19, 20, 21):  # the issuer is not among the CAs we trust
        trusted = _trusted_names(ctx)
        if leaf is None:
            what = f"the server's certificate is not trusted ({message})"
        elif code == 18 or leaf.issuer == leaf.subject:
            what = f"the server's certificate is self-signed ({format_name(leaf.subject)!r})"
        else:
            issuer = format_name(leaf.issuer)
            if issuer in trusted:
                what = (
                    "the server's certificate is not trusted: it was issued by another CA "
                    f"that is also named {issuer!r}"
                )
            else:
                we = " or ".join(repr(n) for n in trusted) or "no CA"
                what = (
                    f"the server's certificate is not trusted: it was issued by {issuer!r}, "
                    f"and we trust {we}"
                )
        return VerificationError(
            what,
            file=ca_file,
            hint="pass --cacert with the CA that issued it, or give the server a certificate "
            "from our CA",
        )
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        when = f" on {leaf.not_valid_after_utc:%Y-%m-%d}" if leaf is not None else ""
        return VerificationError(
            f"the server's certificate expired{when}",
            hint="renew it on the server (mtlskit renew), then restart the server",
        )
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return VerificationError(
            "the server's certificate is not valid yet", hint="check both machines' clocks"
        )
    if code == 26:  # X509_V_ERR_INVALID_PURPOSE
        return VerificationError(
            "the server's certificate is not for TLS servers (no extendedKeyUsage serverAuth)",
            hint="issue it with the server profile (mtlskit issue server)",
        )
    return VerificationError(
        f"the server's certificate does not verify: {message}",
        file=ca_file,
        hint="inspect it with mtlskit verify",
    )


def _handshake_failed(exc: ssl.SSLError, target: _Target, files: _Files | None) -> MtlsError:
    refused = _refused(exc, files)
    if refused is not None:
        return refused
    reason = getattr(exc, "reason", None) or ""
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        # An OpenSSL server answers a missing client certificate this way in TLS 1.2.
        if files is not None and files.cert is None:
            return HandshakeError(
                f"the server requires a client certificate and we sent none ({_alert_words(exc)})",
                hint="pass --cert and --key, or --certs DIR with client.crt and client.key",
            )
        return HandshakeError(
            f"TLS handshake with {target.where} failed ({_alert_words(exc)})",
            hint="the server may require a client certificate we did not send, or share no "
            "TLS version or cipher with us",
        )
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return HandshakeError(
            f"{target.where} does not speak TLS ({_alert_words(exc)})",
            hint="check the port; mtlskit get talks to https:// servers only",
        )
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return HandshakeError(
            f"{target.where} closed the connection during the TLS handshake",
            hint="check that it is a TLS server and accepts TLS ≥ 1.2",
        )
    return HandshakeError(
        f"TLS handshake with {target.where} failed ({_alert_words(exc)})",
        hint="check that the server accepts TLS ≥ 1.2 and requires a certificate from our CA",
    )


def _server_verdict(
    target: _Target, context: ssl.SSLContext, timeout: float
) -> ssl.SSLError | None:
    """Handshake again and read before writing, to catch the alert a refusal sends.

    After a TLS 1.3 handshake the server checks our certificate while our request
    is already on its way; it then closes with that request unread, the kernel
    answers with a reset, and the alert is lost. On a fresh connection where we
    only read, the alert arrives intact.
    """
    try:
        with (
            socket.create_connection((target.connect_host, target.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=target.host) as tls,
        ):
            tls.settimeout(min(timeout, 2.0))
            tls.recv(1)
    except ssl.SSLError as exc:
        return exc
    except (OSError, ValueError):
        return None
    return None


def _closed_without_answer(
    target: _Target, tls_version: str, context: ssl.SSLContext, files: _Files | None, timeout: float
) -> MtlsError:
    if tls_version == "TLSv1.3":
        verdict = _server_verdict(target, context, timeout)
        refused = _refused(verdict, files) if verdict is not None else None
        if refused is not None:
            return refused
        return HandshakeError(
            f"{target.where} closed the connection without answering",
            file=files.cert if files else None,
            hint="with TLS 1.3 this is how a server may refuse a client certificate: check the "
            "server's log, and that ours is issued by the CA it trusts",
        )
    return HandshakeError(
        f"{target.where} closed the connection without answering", hint="check the server's log"
    )


# ---------------------------------------------------------------- requests


def request(
    method: str = "GET",
    url: str = DEFAULT_URL,
    *,
    certs: PathLike | None = DEFAULT_CERTS,
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    data: bytes | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    resolve: str | None = None,
) -> Response:
    """Make one HTTPS request with mutual TLS and read the whole response.

    Trust and the client certificate come from ``context`` when given, else from
    the seed layout in ``certs`` (``ca``/``cert``/``key`` override single files).
    ``timeout`` bounds the connect and each read, in seconds. ``resolve`` is curl's
    ``HOST:PORT:ADDRESS``: connect to ADDRESS but check the certificate for HOST.
    A non-2xx status is a :class:`Response`, not an error; every failure to get one
    is an :class:`~mtlskit.errors.MtlsError` in plain words.
    """
    import http.client

    from mtlskit import __version__

    target = _target(url, resolve)
    files: _Files | None = None
    if context is None:
        files = _files(certs, ca, cert, key)
        context = client_context(files.ca, files.cert, files.key)
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, not {timeout:g}", hint="e.g. --timeout 10")
    if isinstance(data, str):
        data = data.encode()

    where = target.where
    try:
        host = _ascii(target.connect_host)  # getaddrinfo takes bytes; typeshed says str
        raw = socket.create_connection((host, target.port), timeout=timeout)  # type: ignore[arg-type]
    except ConnectionRefusedError as exc:
        raise HandshakeError(
            f"connection refused by {where}", hint="is the server running (mtlskit serve)?"
        ) from exc
    except socket.gaierror as exc:
        raise HandshakeError(
            f"cannot resolve {target.connect_host!r}: {exc.strerror}",
            hint="check the host name in the URL",
        ) from exc
    except TimeoutError as exc:
        raise HandshakeError(
            f"no connection to {where} within {timeout:g} s",
            hint="check the address and port, or raise --timeout",
        ) from exc
    except OSError as exc:
        raise HandshakeError(
            f"cannot connect to {where}: {exc.strerror or exc}", hint="check the address and port"
        ) from exc

    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=_ascii(target.host))
        except ssl.SSLCertVerificationError as exc:
            raise _verify_failed(exc, target, context, files, timeout) from exc
        except ssl.SSLError as exc:
            raise _handshake_failed(exc, target, files) from exc
        except TimeoutError as exc:
            raise HandshakeError(
                f"no TLS handshake with {where} within {timeout:g} s",
                hint="check that the port serves TLS, or raise --timeout",
            ) from exc
        except OSError as exc:
            raise HandshakeError(
                f"{where} closed the connection during the TLS handshake ({exc.strerror or exc})",
                hint="check that it is a TLS server and accepts TLS ≥ 1.2",
            ) from exc
    except BaseException:
        raw.close()
        raise

    version = tls.version() or ""
    cipher = (tls.cipher() or ("",))[0]
    peer = _peer_summary(tls.getpeercert())
    conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=context)
    conn.sock = tls
    sent = {"User-Agent": f"mtlskit/{__version__}", "Accept": "*/*"}
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for k, v in pairs:
        # Later values win; names are case-insensitive.
        sent = {a: b for a, b in sent.items() if a.lower() != k.lower()}
        sent[k] = v
    try:
        resp = _exchange(conn, method.upper(), target, data, sent)
        body = resp.read()
        status, reason, got = resp.status, resp.reason, tuple(resp.getheaders())
    except ssl.SSLError as exc:
        # With TLS 1.3 the server judges our certificate after our handshake is
        # done: its refusal is an alert on the first read.
        refused = _refused(exc, files)
        if refused is not None:
            raise refused from exc
        if isinstance(exc, ssl.SSLEOFError):
            raise _closed_without_answer(target, version, context, files, timeout) from exc
        raise HandshakeError(
            f"TLS error from {where} ({_alert_words(exc)})", hint="check the server's log"
        ) from exc
    except TimeoutError as exc:
        raise HandshakeError(
            f"no response from {where} within {timeout:g} s", hint="raise --timeout"
        ) from exc
    except (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead) as exc:
        raise _closed_without_answer(target, version, context, files, timeout) from exc
    except http.client.HTTPException as exc:
        raise HandshakeError(
            f"invalid HTTP response from {where}: {type(exc).__name__} {exc}",
            hint="check that it is an HTTP/1.1 server",
        ) from exc
    except OSError as exc:
        raise HandshakeError(
            f"connection to {where} failed: {exc.strerror or exc}", hint="try again"
        ) from exc
    finally:
        conn.close()
    return Response(
        url=target.url,
        status=status,
        reason=reason,
        headers=got,
        body=body,
        tls_version=version,
        cipher=cipher,
        peer=peer,
    )


def _exchange(
    conn: http.client.HTTPSConnection,
    method: str,
    target: _Target,
    data: bytes | None,
    headers: dict[str, str],
) -> http.client.HTTPResponse:
    conn.request(method, target.path, body=data, headers=headers)
    return conn.getresponse()


def get(url: str = DEFAULT_URL, **kwargs: Any) -> Response:
    """``request("GET", url, ...)``: the seed client's call."""
    return request("GET", url, **kwargs)
