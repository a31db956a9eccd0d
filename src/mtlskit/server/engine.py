"""The TLS engine seam: one server-side TLS connection driven over memory buffers.

The protocol (server/protocol.py) never touches ``ssl`` itself: it feeds
ciphertext in, takes plaintext and ciphertext out through :class:`TLSSession`.
:class:`StdlibSession` implements it with ``ssl.SSLObject`` over two
``ssl.MemoryBIO`` (the system OpenSSL). The default engine
(:mod:`mtlskit.server.openssl_engine`, the OpenSSL bundled with cryptography, through
cryptography's bindings) implements the same few methods; :meth:`TLSState.new_session
<mtlskit.server.tlsstate.TLSState.new_session>` picks one. Before either sees a byte,
:func:`check_client_hello` refuses what cannot begin a TLS 1.2+ ClientHello.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Protocol

__all__ = [
    "HELLO_PREFIX",
    "PLAIN_HTTP",
    "StdlibSession",
    "TLSClosed",
    "TLSFailure",
    "TLSSession",
    "check_client_hello",
    "failure_from_openssl_reason",
    "failure_from_ssl_error",
    "failure_from_verify_result",
]

# Larger than one TLS record (16 KiB), so one read() takes a whole record.
_READ_SIZE = 65536

# OpenSSL X509_V_ERR_* codes -> a stable label (stats) ; see `man 3 X509_STORE_CTX_get_error`.
_VERIFY_REASONS = {
    2: "cert_untrusted",  # unable to get issuer certificate
    18: "cert_untrusted",  # self-signed leaf
    19: "cert_untrusted",  # self-signed certificate in chain
    20: "cert_untrusted",  # unable to get local issuer certificate
    21: "cert_untrusted",  # unable to verify the first certificate
    7: "cert_untrusted",  # signature failure
    9: "cert_not_yet_valid",
    10: "cert_expired",
    26: "cert_purpose",  # e.g. an EKU without clientAuth
    23: "cert_revoked",
    3: "crl",  # unable to get CRL
    11: "crl",  # CRL not yet valid
    12: "crl",  # CRL has expired
}


# A request line instead of a ClientHello (check_client_hello, or OpenSSL's HTTP_REQUEST).
PLAIN_HTTP = "plain HTTP sent to the TLS port"


class TLSFailure(Exception):
    """The TLS connection failed; ``reason`` is a stable label, ``detail`` plain words;
    ``alert`` a TLS alert record to send before closing when no engine wrote one."""

    def __init__(self, reason: str, detail: str, alert: bytes = b"") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.alert = alert


class TLSClosed(Exception):
    """The peer closed TLS cleanly (close_notify)."""


def failure_from_ssl_error(exc: ssl.SSLError) -> TLSFailure:
    """Translate an ``ssl.SSLError`` (the stdlib engine) into a :class:`TLSFailure`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = int(getattr(exc, "verify_code", 0) or 0)
        message = str(getattr(exc, "verify_message", "") or "certificate verify failed")
        return failure_from_verify_result(code, message)
    if isinstance(exc, ssl.SSLEOFError):
        return TLSFailure("eof", "connection closed during the handshake")
    return failure_from_openssl_reason(str(getattr(exc, "reason", "") or ""), otherwise=str(exc))


def failure_from_verify_result(code: int, message: str) -> TLSFailure:
    """The :class:`TLSFailure` for an X509_V_ERR_* code of a failed certificate check
    (both engines); ``message`` is OpenSSL's text for it."""
    return TLSFailure(_VERIFY_REASONS.get(code, "cert_invalid"), message)


def failure_from_openssl_reason(reason: str, *, otherwise: str) -> TLSFailure:
    """The :class:`TLSFailure` for an OpenSSL reason such as ``HTTP_REQUEST`` (both
    engines); ``otherwise`` describes a failure that has no reason string."""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return TLSFailure("no_client_cert", "the client sent no certificate")
    if reason in ("UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW"):
        return TLSFailure(
            "old_protocol", "the client offered only a protocol version below TLS 1.2"
        )
    if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER"):
        detail = PLAIN_HTTP if reason == "HTTP_REQUEST" else "not TLS"
        return TLSFailure("not_tls", detail)
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
        return TLSFailure("peer_alert", "the client refused: " + reason.lower())
    if reason == "UNEXPECTED_EOF_WHILE_READING":
        return TLSFailure("eof", "connection closed during the handshake")
    return TLSFailure("protocol", (reason or otherwise).lower())


# The first bytes of a connection that tell whether a TLS ClientHello is coming: the
# record header (5), the handshake header (4) and the client's legacy_version (2).
HELLO_PREFIX = 11

_OLD_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1"}
_ALERT_UNEXPECTED_MESSAGE = 10
_ALERT_RECORD_OVERFLOW = 22
_ALERT_DECODE_ERROR = 50
_ALERT_PROTOCOL_VERSION = 70


def _alert(description: int, version: bytes = b"\x03\x01") -> bytes:
    """A fatal TLS alert record (RFC 8446 section 6), in the client's record version."""
    return b"\x15" + version + b"\x00\x02\x02" + bytes([description])


def check_client_hello(head: bytes) -> TLSFailure | None:
    """Judge the first bytes a client sent (up to :data:`HELLO_PREFIX`), before any engine.

    None: they can begin a ClientHello of TLS 1.2 or later (more bytes may settle it).
    Otherwise the :class:`TLSFailure` to refuse the connection with at once, the same on
    both engines: an SSLv2-format ClientHello, or one offering at most SSL 3.0, TLS 1.0
    or 1.1 (``old_protocol``, with a protocol_version alert), plain HTTP (``not_tls``,
    no alert: the client speaks no TLS), anything else that is not a ClientHello
    (``not_tls``, with an alert). Without this an engine may wait for the rest of a
    record whose header is garbage, until the handshake timeout.
    """
    if not head:
        return None
    first = head[0]
    if first == 0x16:  # a handshake record
        n = len(head)
        if n >= 2 and head[1] != 3:
            return TLSFailure(
                "not_tls", "not TLS (bad record version)", _alert(_ALERT_DECODE_ERROR)
            )
        version = head[1:3] if n >= 3 else b"\x03\x01"
        if n >= 5 and not 0 < int.from_bytes(head[3:5]) <= 1 << 14:
            return TLSFailure(
                "not_tls", "not TLS (bad record length)", _alert(_ALERT_RECORD_OVERFLOW, version)
            )
        if n >= 6 and head[5] != 1:
            return TLSFailure(
                "not_tls",
                "not TLS (the first message is not a ClientHello)",
                _alert(_ALERT_UNEXPECTED_MESSAGE, version),
            )
        if n >= 10 and head[9] != 3:
            return TLSFailure(
                "not_tls", "not TLS (bad ClientHello version)", _alert(_ALERT_DECODE_ERROR, version)
            )
        if n >= 11 and (offered := int.from_bytes(head[9:11])) < 0x0303:
            return TLSFailure(
                "old_protocol",
                f"the client offered {_OLD_VERSIONS.get(offered, 'SSL')} at most "
                "(TLS 1.2 or 1.3 is required)",
                _alert(_ALERT_PROTOCOL_VERSION, version),
            )
        return None
    if first & 0x80:  # SSLv2's two-byte record header; CLIENT-HELLO is message type 1
        return TLSFailure(
            "old_protocol",
            "an SSLv2-format ClientHello (TLS 1.2 or 1.3 is required)",
            _alert(_ALERT_PROTOCOL_VERSION),
        )
    method = head.split(b" ", 1)[0]
    if method.isalpha() and method.isupper():
        return TLSFailure("not_tls", PLAIN_HTTP)
    return TLSFailure("not_tls", "not TLS", _alert(_ALERT_UNEXPECTED_MESSAGE))


class TLSSession(Protocol):
    """What the protocol needs from a TLS engine (all calls are non-blocking)."""

    # Set by read() when the peer's close_notify came after data it returned: the
    # data is answered, then the connection closes (no more bytes may ever arrive).
    peer_closed: bool

    def feed(self, data: bytes) -> None:
        """Ciphertext received from the peer."""

    def do_handshake(self) -> bool:
        """Advance the handshake: True when complete. Raises :class:`TLSFailure`."""

    def read(self) -> bytes:
        """All plaintext available now (``b""`` if none).

        Raises :class:`TLSClosed` on close_notify, :class:`TLSFailure` on errors.
        """

    def write(self, data: bytes) -> None:
        """Encrypt plaintext; the ciphertext is then in :meth:`output`."""

    def output(self) -> bytes:
        """Ciphertext to send to the peer (``b""`` if none)."""

    def shutdown(self) -> None:
        """Queue close_notify (we do not wait for the peer's)."""

    def peer_certificate_der(self) -> bytes | None:
        """The verified peer certificate (DER), or None."""

    def peer_chain_der(self) -> list[bytes]:
        """The chain the peer sent, leaf first (DER); just the leaf where unavailable."""

    def version(self) -> str | None:
        """``TLSv1.3`` … once the handshake is done."""

    def cipher(self) -> str | None:
        """The OpenSSL cipher suite name once the handshake is done."""


class StdlibSession:
    """:class:`TLSSession` over ``ssl.SSLObject`` and two ``ssl.MemoryBIO``.

    A server's side by default; with ``server_hostname`` the client's (the proxy's
    client mode), which verifies that name as ``context`` says.
    """

    __slots__ = ("_in", "_obj", "_out", "peer_closed")

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self.peer_closed = False
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(
            self._in,
            self._out,
            server_side=server_hostname is None,
            server_hostname=server_hostname,
        )

    def feed(self, data: bytes) -> None:
        self._in.write(data)

    def do_handshake(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise failure_from_ssl_error(exc) from None
        return True

    def read(self) -> bytes:
        obj = self._obj
        if self.peer_closed:
            raise TLSClosed
        try:
            data = obj.read(_READ_SIZE)
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLZeroReturnError:
            raise TLSClosed from None
        except ssl.SSLError as exc:
            raise failure_from_ssl_error(exc) from None
        if not data:  # the ssl module's answer to close_notify
            raise TLSClosed
        if not self._in.pending:  # the usual case: one record, nothing more buffered
            return data
        parts = [data]
        while True:
            try:
                chunk = obj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True  # after what came before (parts is never empty)
                break
            except ssl.SSLError as exc:
                raise failure_from_ssl_error(exc) from None
            if not chunk:
                self.peer_closed = True
                break
            parts.append(chunk)
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise failure_from_ssl_error(exc) from None

    def output(self) -> bytes:
        out = self._out
        return out.read() if out.pending else b""

    def shutdown(self) -> None:
        # SSLWantReadError: close_notify is queued and we do not wait for the peer's;
        # other errors: the connection was not in a state to close cleanly.
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._obj.unwrap()

    def peer_certificate_der(self) -> bytes | None:
        try:
            return self._obj.getpeercert(binary_form=True)
        except ValueError:  # handshake not done
            return None

    def peer_chain_der(self) -> list[bytes]:
        leaf = self.peer_certificate_der()
        if not leaf:
            # No client certificate (client_cert="optional"). Asking 3.13.0's
            # get_unverified_chain() then raises AttributeError inside ssl.py.
            return []
        # Python ≥ 3.13 exposes the chain the client sent; before, only the leaf.
        get_chain = getattr(self._obj, "get_unverified_chain", None)
        if get_chain is not None:
            chain: list[bytes] | None = get_chain()
            if chain:
                return chain
        return [leaf]

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> str | None:
        c = self._obj.cipher()
        return c[0] if c else None
