"""The mTLS client: :func:`get` / :func:`request`, and SSLContext helpers for other libraries.

:func:`request` speaks HTTP/1.1 itself over a connection from
:func:`mtlskit.connect.open_connection`, one request per connection, the response
parsed by httptools (llhttp, as the server's requests are), and turns every failure
into an error of :mod:`mtlskit.errors`, by stage, that says what went wrong and what
to do next::

    from mtlskit.client import get
    r = get("https://localhost:8443", certs="certs")   # the seed client's defaults
    print(r.status, r.text, r.peer.subject if r.peer else None)
    r.raise_for_status()                                # HTTPStatusError for 400 and more

The same context works in httpx, requests/urllib3 and aiohttp (real handshakes in
``tests/test_client_libs.py``)::

    ctx = mtlskit.client.ssl_context("certs")           # ca.crt + client.crt + client.key
    httpx.get(url, verify=ctx)                          # not verify="ca.crt", cert=...:
                                                        # httpx 0.28 drops cert= then
    requests_session(ctx).get(url)                      # MtlsAdapter(ctx) on a Session
    async with aiohttp.ClientSession() as s:
        await s.get(url, ssl=ctx)

requests (and json) are imported inside the functions that use them, on first use:
importing this module, as ``mtlskit get`` does, does not load them. Nor does it load
``http.client``, which imports the ``email`` package (8-9 ms of import time).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools

from mtlskit import __version__
from mtlskit.connect import Connection, Target, find_client_files, open_connection, ssl_name
from mtlskit.errors import ConfigError, HTTPStatusError, ProtocolError
from mtlskit.tls import client_context

if TYPE_CHECKING:
    from requests import Session
    from requests.adapters import HTTPAdapter

    MtlsAdapter: type[HTTPAdapter]

__all__ = [
    "DEFAULT_CERTS",
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
        """The body decoded as JSON; :class:`~mtlskit.errors.ProtocolError` (an
        :class:`~mtlskit.errors.MtlsError`, like every other failure) when it is not."""
        import json

        try:
            return json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            kind = self.header("content-type") or "no Content-Type"
            raise ProtocolError(
                f"the response body is not JSON ({kind}, {len(self.body)} bytes): {exc}",
                file=self.url,
                hint="read it as text (r.text), or check the URL and the server",
            ) from exc

    def raise_for_status(self) -> Response:
        """This response if its status is below 400, else :class:`HTTPStatusError` carrying it."""
        if self.status < 400:
            return self
        raise HTTPStatusError(
            f"the server answered {self.status} {self.reason}".rstrip(),
            file=self.url,
            hint="see the response body",
            response=self,
        )

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
    files = find_client_files(certs, ca, cert, key)
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


_SAN_KIND = {"DNS": "DNS", "IP Address": "IP", "email": "email", "URI": "URI"}


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
        subject=ssl_name(cert.get("subject", ())),
        issuer=ssl_name(cert.get("issuer", ())),
        sans=sans,
        not_before=_iso(cert["notBefore"]),
        not_after=_iso(cert["notAfter"]),
        serial=str(cert.get("serialNumber", "")),
    )


# ---------------------------------------------------------------- requests


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names


def _request_headers(
    method: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None
) -> dict[str, str]:
    """Our default headers, then the caller's: later values win, names in any case.

    Checked before connecting: what cannot be sent is a ConfigError, not an error from
    the middle of the request."""
    if not _TOKEN.fullmatch(method):
        raise ConfigError(f"invalid HTTP method {method!r}", hint="e.g. GET, POST or PUT")
    sent = {"User-Agent": f"mtlskit/{__version__}", "Accept": "*/*"}
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for k, v in pairs:
        if not _TOKEN.fullmatch(k) or "\r" in v or "\n" in v or not _latin1(v):
            raise ConfigError(
                f"invalid header {k}: {v!r}",
                hint="a name is letters, digits and -; a value is Latin-1 on one line",
            )
        sent = {a: b for a, b in sent.items() if a.lower() != k.lower()}
        sent[k] = v
    return sent


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- HTTP/1.1


# Methods whose request has a body by definition: without one they send Content-Length: 0
# (as http.client and curl do; a server may otherwise wait for a body, or answer 411).
_METHODS_WITH_BODY = frozenset({"PATCH", "POST", "PUT"})

# The most we buffer of a response's header section (with any 1xx before it), so that
# a broken or hostile server cannot make us hold more: http.client's bound on one line.
_HEADER_LIMIT = 64 * 1024

_STATUS_LINE = re.compile(rb"HTTP/\d\.\d \d{3}(?: [^\r\n]*)?\r?\n")


def _host_header(target: Target) -> str:
    """RFC 9110 Host: the name (IDNA-encoded, IPv6 in brackets), and the port unless 443."""
    host = target.host if target.host.isascii() else target.host.encode("idna").decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    return host if target.port == 443 else f"{host}:{target.port}"


def _request_bytes(
    method: str, target: Target, sent: Mapping[str, str], data: bytes | None
) -> bytes:
    """The request: line, header section and body, as one write.

    What http.client sent, plus Connection: close: Host, Accept-Encoding: identity (the
    body arrives as the server stored it; we decode no coding) and Content-Length
    unless the caller set them."""
    names = {k.lower() for k in sent}
    lines = [f"{method} {target.path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {_host_header(target)}")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity")
    if "content-length" not in names and "transfer-encoding" not in names:
        if data is not None:
            lines.append(f"Content-Length: {len(data)}")
        elif method in _METHODS_WITH_BODY:
            lines.append("Content-Length: 0")
    if "connection" not in names:
        lines.append("Connection: close")  # one request per connection: the server may close
    lines.extend(f"{k}: {v}" for k, v in sent.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + data if data else head


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp at the end of the response."""


class _Answer:
    """httptools' callbacks for one response: the final one, after any 1xx, read whole."""

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # What http.client took and the RFCs let a user agent take (RFC 9112 2.2, 5.2,
        # 6.1): bare LF line ends, obs-fold, and Transfer-Encoding beside Content-Length
        # (then read until close). Safe here: one request per connection, and nothing
        # we read is forwarded. Two Content-Lengths stay an error.
        self.parser.set_dangerous_leniencies(
            lenient_optional_cr_before_lf=True, lenient_headers=True, lenient_chunked_length=True
        )
        self.head_only = head_only  # a HEAD's answer has headers only, whatever they say
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False  # the final response's header section is in
        self.done = False

    def on_message_begin(self) -> None:
        self.reason, self.headers = b"", []  # a 1xx's are dropped

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # else a chunked body's trailer: ignored
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final answer follows
        self.headers_done = True
        if self.head_only:
            self.done = True
            raise _Stop  # httptools cannot be told the request was a HEAD: stop here

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.done = True
            raise _Stop  # anything after the answer is not ours to read

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return b", ".join(values) if values else None

    def truncation(self) -> str | None:
        """At the end of the connection: what is missing, or None when the answer is whole."""
        if not self.headers_done:
            return "in the header section"
        coding = self.header(b"transfer-encoding")
        if coding is not None:
            # Chunked last: the last chunk is missing. Another coding: read until close.
            last = coding.split(b",")[-1].strip().lower()
            return "before the last chunk of the body" if last == b"chunked" else None
        length = self.header(b"content-length")
        if length is not None:
            got = sum(map(len, self.body))
            return f"after {got} of {int(length)} bytes of the body"
        return None  # the body ends when the connection does


def _read_response(conn: Connection, *, head_only: bool) -> _Answer:
    """Read the answer to the request sent on ``conn``; ProtocolError when it is not one.

    Socket and ssl errors pass up to ``conn.map_errors()`` (ReadTimeout and friends)."""
    where = conn.peer.target.where
    answer = _Answer(head_only)
    start = b""  # the first bytes, to quote a bad status line
    received = 0
    while not answer.done:
        data = conn.tls.recv(65536)
        if not data:
            if not received:
                raise conn.closed_without_answer()  # with TLS 1.3, maybe a refusal
            missing = answer.truncation()
            if missing is not None:
                raise ProtocolError(
                    f"{where} closed the connection without answering in full ({missing})",
                    hint="check the server's log",
                )
            break
        if len(start) < 1024:
            start += data[: 1024 - len(start)]
            if not b"HTTP/".startswith(start[:5]):  # llhttp also takes RTSP/ and ICE/
                raise _invalid(where, start, "")
        room = max(_HEADER_LIMIT - received, 0)
        received += len(data)
        if not answer.headers_done and len(data) > room:
            # The header section (and any 1xx before it) must end within the limit.
            _feed(answer, data[:room], where, start)
            if not answer.headers_done:
                raise ProtocolError(
                    f"invalid HTTP response from {where}: the header section is longer than "
                    f"{_HEADER_LIMIT // 1024} KiB",
                    hint="check that it is an HTTP/1.1 server",
                )
            data = data[room:]
        if not answer.done:
            _feed(answer, data, where, start)
    return answer


def _feed(answer: _Answer, data: bytes, where: str, start: bytes) -> None:
    try:
        answer.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        answer.status = 101
    except httptools.HttpParserError as exc:
        if not answer.done:  # else our _Stop: the answer is whole
            raise _invalid(where, start, str(exc)) from exc
    if answer.status == 101:
        raise ProtocolError(
            f"{where} answered 101 Switching Protocols, and we asked for no upgrade",
            hint="check that it is an HTTP/1.1 server",
        )


def _invalid(where: str, start: bytes, reason: str) -> ProtocolError:
    """A response we or llhttp (its ``reason``) refused, in plain words."""
    first, newline, _ = start.partition(b"\n")
    if not newline or not _STATUS_LINE.fullmatch(first + newline):  # it failed in that line
        line = " ".join(first.decode("latin-1").split())
        said = f"BadStatusLine {line}"  # http.client's words, kept for whoever matches them
    else:
        said = reason[:1].lower() + reason[1:]
    return ProtocolError(
        f"invalid HTTP response from {where}: {said}", hint="check that it is an HTTP/1.1 server"
    )


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
    Any status is a :class:`Response` (:meth:`Response.raise_for_status` turns 400
    and more into :class:`~mtlskit.errors.HTTPStatusError`); every failure to get one
    is an error of :mod:`mtlskit.errors` in plain words: ConnectError,
    NameResolutionError, ConnectTimeout, ReadTimeout, PeerVerificationError,
    CertificateRefusedError, HandshakeError, ProtocolError, or PKIError and
    ConfigError for our files and arguments.
    """
    if isinstance(data, str):
        data = data.encode()
    method = method.upper()
    sent = _request_headers(method, headers)
    conn = open_connection(
        url,
        certs=certs,
        ca=ca,
        cert=cert,
        key=key,
        context=context,
        timeout=timeout,
        resolve=resolve,
    )
    tls, target = conn.tls, conn.peer.target
    try:
        cipher = (tls.cipher() or ("",))[0]
        peer = _peer_summary(tls.getpeercert())
        with conn.map_errors():
            tls.sendall(_request_bytes(method, target, sent, data))
            answer = _read_response(conn, head_only=method == "HEAD")
    finally:
        tls.close()
    return Response(
        url=target.url,
        status=answer.status,
        reason=answer.reason.decode("latin-1").strip(),
        headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.headers),
        body=b"".join(answer.body),
        tls_version=conn.tls_version,
        cipher=cipher,
        peer=peer,
    )


def get(url: str = DEFAULT_URL, **kwargs: Any) -> Response:
    """``request("GET", url, ...)``: the seed client's call."""
    return request("GET", url, **kwargs)
