"""A TLS engine on the OpenSSL that the cryptography wheel bundles (4.x), for the server.

Why: the system ``ssl`` module links OpenSSL 3.0, whose full handshakes spend
most of their time in provider/decoder look-ups, locks and malloc (perf on
nginx and on ``mtlskit serve``); OpenSSL 4 does the same handshake in about
60 % of the CPU time. cryptography already ships it, with cffi bindings
(``cryptography.hazmat.bindings``) for the SSL functions pyOpenSSL uses, so
this needs no new dependency. Each connection runs over two memory BIOs,
without a Python exception per WANT_READ, through a buffer of its thread's (one
event loop per thread).

Supported ground only: every function called is one the bindings export (no
symbol is looked up in the library), every return code is checked, and a
failure reads OpenSSL's whole error queue into one error (as pyOpenSSL's
``_openssl_assert`` does).

The policy stays in :mod:`mtlskit.tls`: :func:`context_from` copies it from the
``ssl.SSLContext`` that :func:`mtlskit.tls.server_context` built (minimum version,
TLS 1.2 cipher list, verify mode, CRL check) and loads the same files. Where the
bindings lack a function, :data:`AVAILABLE` is false, :data:`UNAVAILABLE_REASON`
says why, and the server keeps the stdlib engine.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.errors import PKIError
from mtlskit.server.engine import (
    TLSClosed,
    TLSFailure,
    failure_from_openssl_reason,
    failure_from_verify_result,
)
from mtlskit.server.revocation import Revocation, RevokedSerials
from mtlskit.tls import SERVER_TLS12_CIPHERS

__all__ = [
    "AVAILABLE",
    "UNAVAILABLE_REASON",
    "OpenSSLContext",
    "OpenSSLSession",
    "context_from",
    "openssl_version",
]

log = logging.getLogger("mtlskit.server")

_NEEDED = [
    "SSL_CTX_new",
    "TLS_server_method",
    "SSL_CTX_free",
    "SSL_CTX_use_certificate_chain_file",
    "SSL_CTX_use_PrivateKey_file",
    "SSL_CTX_check_private_key",
    "SSL_CTX_load_verify_locations",
    "SSL_CTX_set_verify",
    "SSL_CTX_set_min_proto_version",
    "SSL_CTX_set_options",
    "SSL_CTX_set_cipher_list",
    "SSL_CTX_set_session_id_context",
    "SSL_CTX_set_session_cache_mode",
    "SSL_CTX_get_session_cache_mode",
    "SSL_CTX_set_timeout",
    "SSL_CTX_get_timeout",
    "SSL_CTX_get_cert_store",
    "SSL_CTX_set_mode",
    "X509_STORE_set_flags",
    "SSL_new",
    "SSL_free",
    "BIO_new",
    "BIO_s_mem",
    "SSL_set_bio",
    "SSL_set_accept_state",
    "BIO_write",
    "BIO_read",
    "SSL_do_handshake",
    "SSL_get_error",
    "SSL_read",
    "SSL_write",
    "SSL_shutdown",
    "ERR_clear_error",
    "ERR_get_error",
    "ERR_reason_error_string",
    "SSL_get_verify_result",
    "X509_verify_cert_error_string",
    "SSL_get_peer_certificate",
    "X509_free",
    "i2d_X509_bio",
    "BIO_get_mem_data",
    "BIO_free",
    "SSL_get_peer_cert_chain",
    "sk_X509_num",
    "sk_X509_value",
    "SSL_get_version",
    "SSL_get_current_cipher",
    "SSL_CIPHER_get_name",
    "SSL_CTX_add_extra_chain_cert",
    "SSL_CTX_set_ciphersuites",
    "BIO_new_mem_buf",
    "d2i_X509_bio",
    "X509_STORE_set_purpose",
    "SSL_load_client_CA_file",
    "SSL_CTX_set_client_CA_list",
    "X509_STORE_CTX_get_error_depth",
    "X509_STORE_CTX_get_current_cert",
    "X509_STORE_CTX_get1_chain",
    "X509_STORE_CTX_set_error",
    "X509_get_serialNumber",
    "ASN1_STRING_get0_data",
    "ASN1_STRING_length",
    "X509_NAME_cmp",
    "X509_get_issuer_name",
    "X509_get_subject_name",
    "sk_X509_free",
    "OpenSSL_version",
]

UNAVAILABLE_REASON = ""
try:
    from cryptography.hazmat.bindings.openssl.binding import Binding

    _binding = Binding()
    lib: Any = _binding.lib
    ffi: Any = _binding.ffi
    _missing = [name for name in _NEEDED if not hasattr(lib, name)]
    AVAILABLE = not _missing
    if _missing:
        UNAVAILABLE_REASON = "cryptography's bindings lack " + ", ".join(_missing[:3])
except ImportError:  # pragma: no cover - cryptography is a dependency
    AVAILABLE = False
    UNAVAILABLE_REASON = "cryptography's OpenSSL bindings cannot be imported"

_BUF_SIZE = 65536
# SSL_MODE_NO_AUTO_CHAIN (ssl.h since 1.0.2, a documented flag of the exported
# SSL_CTX_set_mode): the bindings export the function, not this constant.
_MODE_NO_AUTO_CHAIN = 0x8
if AVAILABLE:
    _WANT_READ = lib.SSL_ERROR_WANT_READ
    _ZERO_RETURN = lib.SSL_ERROR_ZERO_RETURN
    _SSL_ERROR = lib.SSL_ERROR_SSL


class _ThreadBuffer(threading.local):
    """One I/O buffer per thread, looked up in each call: filled and emptied within that
    call (cffi lets go of the GIL inside OpenSSL, so a buffer shared between threads, e.g.
    two event loops, would be overwritten under the reader). Per connection it would cost
    64 KiB for each idle connection."""

    def __init__(self) -> None:
        self.buf = ffi.new("char[]", _BUF_SIZE)


if AVAILABLE:
    _thread = _ThreadBuffer()


# TLS 1.3: AES-128-GCM first, as Go and nginx negotiate with Go and curl clients.
# OpenSSL's own order starts with AES-256-GCM-SHA384, whose SHA-384 key schedule
# took 6 % of a resumed handshake (perf); SHA-256 runs on the CPU's SHA extensions.
_TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def openssl_version() -> str:
    """``OpenSSL 4.0.3 29 Sep 2026``: the library this engine runs on."""
    return str(ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode())


class OpenSSLContext:
    """An ``SSL_CTX`` of the bundled OpenSSL, freed with this object (with the verify
    callback it calls, when it checks revocation)."""

    __slots__ = ("_keepalive", "ptr")

    def __init__(self, ptr: Any, keepalive: Any = None) -> None:
        self.ptr = ptr
        self._keepalive = keepalive  # what the SSL_CTX calls or points to


def error_queue() -> list[str]:
    """Every entry of OpenSSL's error queue (this thread's), oldest first; empties it."""
    reasons: list[str] = []
    while (code := lib.ERR_get_error()) != 0:
        text = lib.ERR_reason_error_string(code)
        reasons.append(ffi.string(text).decode() if text != ffi.NULL else f"error {code:#x}")
    return reasons


def _check(ok: bool, what: str, path: str | os.PathLike[str] | None = None) -> None:
    """Raise a :class:`PKIError` naming every queued OpenSSL error when ``ok`` is false."""
    if ok:
        return
    reasons = list(dict.fromkeys(error_queue()))  # in order, without repeats
    raise PKIError(
        f"{what}: {'; '.join(reasons) or 'unknown error'}",
        file=path,
        hint="check that the PEM files belong together"
        if path is not None
        else "report this with the OpenSSL version mtlskit serve logs at start",
    )


def context_from(
    policy: ssl.SSLContext,
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str],
    *,
    crl: str | os.PathLike[str] | None = None,
    stateful_tickets: bool = True,
    any_client_purpose: bool = False,
    client_ca_names: bool = True,
) -> OpenSSLContext:
    """The bundled-OpenSSL twin of ``policy`` (from :func:`mtlskit.tls.server_context`).

    ``stateful_tickets``: TLS 1.3 sessions are kept in the context (OpenSSL's own bound,
    :data:`mtlskit.server.config.SESSION_CACHE_BOUND` sessions); False: stateless tickets.
    ``any_client_purpose``: verify client chains without OpenSSL's "ssl_client" purpose
    check (extendedKeyUsage clientAuth), for the CA service's renewal of server-only
    certificates; signatures, validity, CA flags and the CRL are checked as always.
    ``client_ca_names``: name the CAs of the ``ca`` bundle in the CertificateRequest
    (False for a bundle too large to send in every handshake).
    """
    lib.ERR_clear_error()  # what is queued now is this function's
    raw = lib.SSL_CTX_new(lib.TLS_server_method())
    _check(raw != ffi.NULL, "cannot create an OpenSSL context")
    ctx = ffi.gc(raw, lib.SSL_CTX_free)
    tls13 = policy.minimum_version >= ssl.TLSVersion.TLSv1_3
    _check(
        lib.SSL_CTX_set_min_proto_version(ctx, lib.TLS1_3_VERSION if tls13 else lib.TLS1_2_VERSION)
        == 1,
        "cannot set the minimum TLS version",
    )
    options = (
        lib.SSL_OP_NO_COMPRESSION
        | lib.SSL_OP_NO_RENEGOTIATION
        | lib.SSL_OP_CIPHER_SERVER_PREFERENCE
    )
    # TLS 1.3 tickets name a session kept in this context's cache (stateful) instead of
    # carrying it encrypted (stateless): a full handshake then skips encoding and
    # encrypting the session twice (two tickets), a resumption skips decrypting and
    # decoding it with the client certificate (docs/bench.md). There are no ticket keys
    # to steal; a reload or rotation makes a new context, so old sessions stop resuming.
    # The cache is OpenSSL's, with its default bound (config.SESSION_CACHE_BOUND sessions,
    # oldest out first), the only bound the bindings let us keep (SSL_CTX_ctrl, behind
    # SSL_CTX_sess_set_cache_size, and SSL_CTX_set_num_tickets are not exported: two
    # tickets per handshake). Measured against stateless tickets, same run: +17 % full
    # and +50 % resumed handshakes per CPU-second, +92 MiB RSS when full (docs/bench.md).
    if stateful_tickets:
        options |= lib.SSL_OP_NO_TICKET
    _check(
        lib.SSL_CTX_set_options(ctx, options) & options == options,
        "cannot set the TLS options",
    )
    if stateful_tickets:
        lib.SSL_CTX_set_session_cache_mode(ctx, lib.SSL_SESS_CACHE_SERVER)
        _check(
            lib.SSL_CTX_get_session_cache_mode(ctx) == lib.SSL_SESS_CACHE_SERVER,
            "cannot turn the session cache on",
        )
    # Idle connections hand their 16 KiB+ record buffers back to the allocator. The
    # server sends the chain from its certificate file (plus intermediates found once,
    # below) instead of re-building and re-verifying its own chain in every handshake:
    # that auto-chain cost 8 % of a full P-256 handshake (perf).
    mode = lib.SSL_MODE_RELEASE_BUFFERS | _MODE_NO_AUTO_CHAIN
    _check(lib.SSL_CTX_set_mode(ctx, mode) & mode == mode, "cannot set the TLS mode")
    _check(
        lib.SSL_CTX_set_cipher_list(ctx, SERVER_TLS12_CIPHERS.encode()) == 1,
        "cannot set the TLS 1.2 cipher list",
    )
    _check(
        lib.SSL_CTX_set_ciphersuites(ctx, _TLS13_SUITES) == 1,
        "cannot set the TLS 1.3 cipher suites",
    )
    _check(
        lib.SSL_CTX_use_certificate_chain_file(ctx, os.fsencode(cert)) == 1,
        "cannot load certificate",
        cert,
    )
    _check(
        lib.SSL_CTX_use_PrivateKey_file(ctx, os.fsencode(key), lib.SSL_FILETYPE_PEM) == 1,
        "cannot load private key",
        key,
    )
    _check(lib.SSL_CTX_check_private_key(ctx) == 1, "private key does not match certificate", key)
    for der in _intermediates(cert, ca):
        bio = lib.BIO_new_mem_buf(der, len(der))
        _check(bio != ffi.NULL, "cannot read an intermediate CA certificate", ca)
        x509 = lib.d2i_X509_bio(bio, ffi.NULL)
        lib.BIO_free(bio)
        if x509 == ffi.NULL or lib.SSL_CTX_add_extra_chain_cert(ctx, x509) != 1:  # takes x509
            if x509 != ffi.NULL:
                lib.X509_free(x509)
            _check(False, "cannot add an intermediate CA certificate", ca)
    _check(
        lib.SSL_CTX_load_verify_locations(ctx, os.fsencode(ca), ffi.NULL) == 1,
        "cannot load CA",
        ca,
    )
    if client_ca_names:
        _name_client_cas(ctx, ca)
    # Revocation: the CRL's serials in a set, looked up by the verify callback (its cost
    # does not grow with the CRL's size, unlike OpenSSL's CRL check: server/revocation.py).
    callback, issuer = (
        _revocation_callback(RevokedSerials.from_files(crl, ca)) if crl else (ffi.NULL, None)
    )
    store = lib.SSL_CTX_get_cert_store(ctx)
    _check(store != ffi.NULL, "the OpenSSL context has no certificate store")
    if any_client_purpose:
        # The store's purpose is inherited by each verification before the SSL layer's
        # "ssl_client" default, which only fills what is unset (X509_VERIFY_PARAM_inherit).
        _check(
            lib.X509_STORE_set_purpose(store, lib.X509_PURPOSE_ANY) == 1,
            "cannot relax the client certificate purpose",
            ca,
        )
    verify = lib.SSL_VERIFY_NONE
    if policy.verify_mode == ssl.CERT_REQUIRED:
        verify = lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_FAIL_IF_NO_PEER_CERT
    elif policy.verify_mode == ssl.CERT_OPTIONAL:
        verify = lib.SSL_VERIFY_PEER
    lib.SSL_CTX_set_verify(ctx, verify, callback)  # void
    # Resumption of sessions that carry a client certificate needs a session id context.
    sid = b"mtlskit"
    _check(
        lib.SSL_CTX_set_session_id_context(ctx, sid, len(sid)) == 1,
        "cannot set the session id context",
    )
    return OpenSSLContext(ctx, (callback, issuer) if crl else None)


def _name_client_cas(ctx: Any, ca: str | os.PathLike[str]) -> None:
    """Name the CAs of the ``ca`` bundle in the CertificateRequest, as Go (ClientCAs) and
    nginx (ssl_client_certificate) do: a client with several certificates (browsers,
    Java, curl with a keychain) offers the one such a CA issued."""
    names = lib.SSL_load_client_CA_file(os.fsencode(ca))
    _check(names != ffi.NULL, "cannot read the CA names", ca)
    lib.SSL_CTX_set_client_CA_list(ctx, names)  # void; takes the list


# What OpenSSL's own CRL check reports in each case (x509_vfy.c): the same codes give
# the same alert to the client and the same log line (engine.failure_from_verify_result).
if AVAILABLE:
    _VERIFY_ERRORS = {
        Revocation.REVOKED: lib.X509_V_ERR_CERT_REVOKED,
        Revocation.NO_CRL: lib.X509_V_ERR_UNABLE_TO_GET_CRL,
        Revocation.CRL_EXPIRED: lib.X509_V_ERR_CRL_HAS_EXPIRED,
        Revocation.CRL_NOT_YET_VALID: lib.X509_V_ERR_CRL_NOT_YET_VALID,
    }


def _revocation_callback(revoked: RevokedSerials) -> tuple[Any, Any]:
    """The verify callback (``SSL_CTX_set_verify(3)``) that refuses a revoked client, and
    the issuer certificate it compares with (to keep alive as long as the callback).

    OpenSSL calls it for each certificate of the verified chain, from the top (the
    trust anchor) down to the client's own (depth 0), with ``preverify_ok`` 1 when the
    level is sound; returning 0 with an error set there fails the handshake with that
    error, as OpenSSL's CRL check would. It runs in every full handshake with the
    caches cold from the public-key operations, where each Python step costs about a
    microsecond: the usual case (a good client of the CRL's CA) takes the fewest steps,
    with everything looked up once here (bench/revocation.py measures it).
    """
    issuer = _x509_from_der(revoked.issuer_der)
    issuer_name = lib.X509_get_subject_name(issuer)
    issuer_der, unique = revoked.issuer_der, revoked.issuer_name_unique
    serials, check = revoked.serials, revoked.check
    last_update, next_update = revoked.last_update, revoked.next_update or float("inf")
    get_depth = lib.X509_STORE_CTX_get_error_depth
    get_cert = lib.X509_STORE_CTX_get_current_cert
    get_issuer_name, name_cmp = lib.X509_get_issuer_name, lib.X509_NAME_cmp
    get_serial, get_data, get_length = (
        lib.X509_get_serialNumber,
        lib.ASN1_STRING_get0_data,
        lib.ASN1_STRING_length,
    )
    cast, unpack, now = ffi.cast, ffi.unpack, time.time
    asn1_string, char_p = ffi.typeof("ASN1_STRING *"), ffi.typeof("char *")
    # The top of the chain being verified, and the depth its next level will have.
    top, below = [0], [-1]

    def verify(ok: int, store: Any) -> int:
        if not ok:
            return 0
        depth = get_depth(store)
        if depth:
            if depth != below[0]:
                top[0] = depth  # a new chain starts at its top
            below[0] = depth - 1
            return 1
        below[0] = -1
        cert = get_cert(store)
        # The CRL's CA issued it: the same name, and then, unless that is the trust
        # anchor right above (the bundle's only certificate of that name), the same
        # certificate (OpenSSL would find this CRL by name, and fail its signature).
        by_issuer = name_cmp(get_issuer_name(cert), issuer_name) == 0
        if by_issuer and not (unique and top[0] == 1):
            by_issuer = _issuer_der(store) == issuer_der
        asn1 = cast(asn1_string, get_serial(cert))  # an ASN1_INTEGER is an ASN1_STRING
        serial = int.from_bytes(unpack(cast(char_p, get_data(asn1)), get_length(asn1)))
        t = now()
        if by_issuer and serial not in serials and last_update <= t <= next_update:
            return 1  # RevokedSerials.check would say GOOD: spare the call
        status = check(serial, by_issuer, t)
        if status is Revocation.GOOD:
            return 1
        lib.X509_STORE_CTX_set_error(store, _VERIFY_ERRORS[status])
        return 0

    def on_error(_type: object, exc: BaseException | None, _tb: object) -> None:
        log.error("internal error in the revocation check: %r", exc)

    # An exception in the callback (a bug) refuses the client (returns 0), never admits it.
    callback = ffi.callback("int (*)(int, X509_STORE_CTX *)", verify, error=0, onerror=on_error)
    return callback, issuer


def _x509_from_der(der: bytes) -> Any:
    bio = lib.BIO_new_mem_buf(der, len(der))
    _check(bio != ffi.NULL, "cannot read the CRL's CA certificate")
    x509 = lib.d2i_X509_bio(bio, ffi.NULL)
    lib.BIO_free(bio)
    _check(x509 != ffi.NULL, "cannot load the CRL's CA certificate")
    return ffi.gc(x509, lib.X509_free)


def _issuer_der(store: Any) -> bytes:
    """The DER of the certificate after the one being verified in the verified chain
    (the issuer; the certificate itself when it stands alone)."""
    chain = lib.X509_STORE_CTX_get1_chain(store)  # a copy that holds a reference to each
    if chain == ffi.NULL:
        return b""
    try:
        n = lib.sk_X509_num(chain)
        return _der(lib.sk_X509_value(chain, 1 if n > 1 else 0)) if n else b""
    finally:
        for i in range(lib.sk_X509_num(chain)):
            lib.X509_free(lib.sk_X509_value(chain, i))
        lib.sk_X509_free(chain)


def _intermediates(cert: str | os.PathLike[str], ca: str | os.PathLike[str]) -> list[bytes]:
    """Intermediate CAs to send after a certificate file that holds only the leaf.

    With auto-chain off, OpenSSL sends the certificate file as it is. When that file
    has no chain, the issuers found in the CA bundle are sent, up to (not including)
    a self-signed root: what auto-chain did, once per context instead of per handshake.
    """
    try:
        leaf_file = x509.load_pem_x509_certificates(Path(cert).read_bytes())
        bundle = x509.load_pem_x509_certificates(Path(ca).read_bytes())
    except (OSError, ValueError):
        return []  # OpenSSL has loaded both files already and reports its own errors
    if len(leaf_file) != 1:
        return []  # the file brings its own chain
    chain: list[bytes] = []
    current = leaf_file[0]
    while len(chain) < 8:
        issuer = next((c for c in bundle if c.subject == current.issuer and c != current), None)
        if issuer is None or issuer.subject == issuer.issuer:
            break
        chain.append(issuer.public_bytes(serialization.Encoding.DER))
        current = issuer
    return chain


def _der(x509: Any) -> bytes:
    bio = lib.BIO_new(lib.BIO_s_mem())
    if bio == ffi.NULL:
        lib.ERR_clear_error()
        raise MemoryError("BIO_new failed")
    try:
        if lib.i2d_X509_bio(bio, x509) != 1:
            lib.ERR_clear_error()
            raise MemoryError("i2d_X509_bio failed")
        ptr = ffi.new("char **")
        n = lib.BIO_get_mem_data(bio, ptr)
        return bytes(ffi.buffer(ptr[0], n))
    finally:
        lib.BIO_free(bio)


def _internal(what: str) -> TLSFailure:
    reasons = error_queue()
    return TLSFailure("internal", f"{what}: {'; '.join(reasons) or 'out of memory'}")


class OpenSSLSession:
    """:class:`~mtlskit.server.engine.TLSSession` over the bundled OpenSSL.

    Raises :class:`~mtlskit.server.engine.TLSFailure` (reason ``internal``) when OpenSSL
    cannot allocate the connection.
    """

    __slots__ = ("_context", "_rbio", "_ssl", "_wbio", "peer_closed")

    def __init__(self, context: OpenSSLContext) -> None:
        self.peer_closed = False
        self._context = context  # keeps the SSL_CTX alive as long as this connection
        raw = lib.SSL_new(context.ptr)
        if raw == ffi.NULL:
            raise _internal("SSL_new failed")
        self._ssl = ffi.gc(raw, lib.SSL_free)
        rbio = lib.BIO_new(lib.BIO_s_mem())
        wbio = lib.BIO_new(lib.BIO_s_mem()) if rbio != ffi.NULL else ffi.NULL
        if wbio == ffi.NULL:
            if rbio != ffi.NULL:
                lib.BIO_free(rbio)
            raise _internal("BIO_new failed")
        self._rbio, self._wbio = rbio, wbio
        lib.SSL_set_bio(raw, rbio, wbio)  # the SSL owns and frees both
        lib.SSL_set_accept_state(raw)

    def feed(self, data: bytes) -> None:
        if data and lib.BIO_write(self._rbio, data, len(data)) != len(data):
            raise _internal("BIO_write failed")

    def do_handshake(self) -> bool:
        r = lib.SSL_do_handshake(self._ssl)
        if r == 1:
            return True
        err = lib.SSL_get_error(self._ssl, r)
        if err == _WANT_READ:
            return False
        raise self._failure(err)

    def read(self) -> bytes:
        if self.peer_closed:
            raise TLSClosed
        s, buf, rbio = self._ssl, _thread.buf, self._rbio
        parts: list[bytes] = []
        while True:
            n = lib.SSL_read(s, buf, _BUF_SIZE)
            if n > 0:
                parts.append(ffi.unpack(buf, n))
                # A record's plaintext (16 KiB at most) fits the buffer whole: with no
                # ciphertext left, skip the SSL_read that would only say WANT_READ.
                if lib.BIO_get_mem_data(rbio, ffi.NULL) > 0:
                    continue
                break
            err = lib.SSL_get_error(s, n)
            if err == _WANT_READ:
                break
            if err == _ZERO_RETURN:
                if parts:
                    self.peer_closed = True  # hand over what came before, then close
                    break
                raise TLSClosed
            raise self._failure(err)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, data: bytes) -> None:
        if data:
            n = lib.SSL_write(self._ssl, data, len(data))
            if n <= 0:
                raise self._failure(lib.SSL_get_error(self._ssl, n))

    def output(self) -> bytes:
        wbio, buf = self._wbio, _thread.buf
        n = lib.BIO_read(wbio, buf, _BUF_SIZE)
        if n <= 0:
            return b""
        first: bytes = ffi.unpack(buf, n)
        if n < _BUF_SIZE:
            return first
        parts = [first]
        while (n := lib.BIO_read(wbio, buf, _BUF_SIZE)) > 0:
            parts.append(ffi.unpack(buf, n))
        return b"".join(parts)

    def shutdown(self) -> None:
        # 0: close_notify queued (we do not wait for the peer's); < 0: not in a state to
        # close cleanly. Either way the connection closes next: drop what was queued.
        lib.SSL_shutdown(self._ssl)
        lib.ERR_clear_error()

    def peer_certificate_der(self) -> bytes | None:
        cert = lib.SSL_get_peer_certificate(self._ssl)  # a new reference
        if cert == ffi.NULL:
            return None
        try:
            return _der(cert)
        finally:
            lib.X509_free(cert)

    def peer_chain_der(self) -> list[bytes]:
        leaf = self.peer_certificate_der()
        if leaf is None:
            return []
        chain = [leaf]
        # On a server, OpenSSL's peer chain leaves the leaf out (SSL_get_peer_cert_chain(3)).
        stack = lib.SSL_get_peer_cert_chain(self._ssl)
        if stack != ffi.NULL:
            for i in range(lib.sk_X509_num(stack)):
                der = _der(lib.sk_X509_value(stack, i))
                if der != leaf:
                    chain.append(der)
        return chain

    def version(self) -> str | None:
        v: str = ffi.string(lib.SSL_get_version(self._ssl)).decode()
        return v if v.startswith("TLS") else None

    def cipher(self) -> str | None:
        c = lib.SSL_get_current_cipher(self._ssl)
        if c == ffi.NULL:
            return None
        name: str = ffi.string(lib.SSL_CIPHER_get_name(c)).decode()
        return name

    def _failure(self, err: int) -> TLSFailure:
        """The same stable reasons as :func:`mtlskit.server.engine.failure_from_ssl_error`;
        the first queued error decides, the whole queue is read (and emptied)."""
        queue = error_queue() if err == _SSL_ERROR else []
        lib.ERR_clear_error()
        reason = queue[0].upper().replace(" ", "_") if queue else ""
        if reason == "CERTIFICATE_VERIFY_FAILED":
            verify = int(lib.SSL_get_verify_result(self._ssl))
            message = ffi.string(lib.X509_verify_cert_error_string(verify)).decode()
            return failure_from_verify_result(verify, message)
        if not reason:  # no error queued: the peer went away mid-handshake
            return TLSFailure("eof", "connection closed during the handshake")
        return failure_from_openssl_reason(reason, otherwise=reason)
