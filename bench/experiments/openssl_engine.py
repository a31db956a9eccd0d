"""Prototype: a TLSSession (mtlskit.server.engine) over the OpenSSL that cryptography bundles.

The system ``ssl`` module links OpenSSL 3.0, whose handshakes spend most of their
time in provider/decoder look-ups, locks and malloc (perf on nginx and on
``mtlskit serve``). The cryptography wheel bundles OpenSSL 4.0; pyOpenSSL builds
contexts on it, and its cffi bindings let us drive each connection over memory
BIOs with no Python exception per WANT_READ and one shared buffer.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib

from mtlskit.server.engine import _VERIFY_REASONS, TLSClosed, TLSFailure

__all__ = ["OpenSSLSession", "openssl_server_context"]

_BUF_SIZE = 65536
_BUF = ffi.new("char[]", _BUF_SIZE)  # one event loop per process: one buffer is enough

_WANT_READ = lib.SSL_ERROR_WANT_READ
_ZERO_RETURN = lib.SSL_ERROR_ZERO_RETURN
_SSL_ERROR = lib.SSL_ERROR_SSL

# What CPython's ssl module uses for TLS 1.2 (Lib/ssl.py _DEFAULT_CIPHERS, 3.10+).
_CIPHERS = (
    b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)


def openssl_server_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str],
    *,
    crl: str | os.PathLike[str] | None = None,
    require_client_cert: bool = True,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> SSL.Context:
    """The same policy as :func:`mtlskit.tls.server_context`, on OpenSSL 4."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(
        SSL.TLS1_3_VERSION if min_version >= ssl.TLSVersion.TLSv1_3 else SSL.TLS1_2_VERSION
    )
    ctx.set_options(
        SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE
    )
    ctx.set_cipher_list(_CIPHERS)
    ctx.use_certificate_chain_file(os.fspath(cert))
    ctx.use_privatekey_file(os.fspath(key))
    ctx.check_privatekey()
    ctx.load_verify_locations(os.fspath(ca))
    if crl is not None:
        with open(crl, "rb") as f:
            data = f.read()
        store = ctx.get_cert_store()
        assert store is not None
        from cryptography import x509

        for block in data.split(b"-----END X509 CRL-----")[:-1]:
            store.add_crl(x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n"))
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    mode = SSL.VERIFY_PEER
    if require_client_cert:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    ctx.set_verify(mode)
    # Resumption with client certificates needs a session id context.
    ctx.set_session_id(b"mtlskit")
    return ctx


def _der(x509: Any) -> bytes:
    bio = lib.BIO_new(lib.BIO_s_mem())
    try:
        lib.i2d_X509_bio(bio, x509)
        ptr = ffi.new("char **")
        n = lib.BIO_get_mem_data(bio, ptr)
        return bytes(ffi.buffer(ptr[0], n))
    finally:
        lib.BIO_free(bio)


class OpenSSLSession:
    """:class:`~mtlskit.server.engine.TLSSession` over OpenSSL 4 (cryptography's)."""

    __slots__ = ("_rbio", "_ssl", "_wbio")

    def __init__(self, context: SSL.Context) -> None:
        raw = lib.SSL_new(context._context)
        self._ssl = ffi.gc(raw, lib.SSL_free)
        self._rbio = lib.BIO_new(lib.BIO_s_mem())
        self._wbio = lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(raw, self._rbio, self._wbio)  # the SSL owns and frees both
        # Idle connections give their 16 KiB+ record buffers back to the allocator.
        lib.SSL_set_mode(raw, lib.SSL_MODE_RELEASE_BUFFERS)
        lib.SSL_set_accept_state(raw)

    def feed(self, data: bytes) -> None:
        lib.BIO_write(self._rbio, data, len(data))

    def do_handshake(self) -> bool:
        r = lib.SSL_do_handshake(self._ssl)
        if r == 1:
            return True
        err = lib.SSL_get_error(self._ssl, r)
        if err == _WANT_READ:
            return False
        raise self._failure(err)

    def read(self) -> bytes:
        s, buf = self._ssl, _BUF
        parts: list[bytes] = []
        while True:
            n = lib.SSL_read(s, buf, _BUF_SIZE)
            if n > 0:
                parts.append(ffi.buffer(buf, n)[:])
                continue
            err = lib.SSL_get_error(s, n)
            if err == _WANT_READ:
                break
            if err == _ZERO_RETURN:
                if parts:
                    break  # hand over what came before; the next read() reports the close
                raise TLSClosed
            raise self._failure(err)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, data: bytes) -> None:
        if data and lib.SSL_write(self._ssl, data, len(data)) <= 0:
            raise self._failure(lib.SSL_get_error(self._ssl, -1))

    def output(self) -> bytes:
        wbio, buf = self._wbio, _BUF
        n = lib.BIO_read(wbio, buf, _BUF_SIZE)
        if n <= 0:
            return b""
        first = ffi.buffer(buf, n)[:]
        if n < _BUF_SIZE:
            return first
        parts = [first]
        while (n := lib.BIO_read(wbio, buf, _BUF_SIZE)) > 0:
            parts.append(ffi.buffer(buf, n)[:])
        return b"".join(parts)

    def shutdown(self) -> None:
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
        # On a server, OpenSSL's peer chain leaves out the leaf.
        stack = lib.SSL_get_peer_cert_chain(self._ssl)
        if stack != ffi.NULL:
            for i in range(lib.sk_X509_num(stack)):
                der = _der(lib.sk_X509_value(stack, i))
                if der != leaf:
                    chain.append(der)
        return chain

    def version(self) -> str | None:
        v = ffi.string(lib.SSL_get_version(self._ssl)).decode()
        return v if v.startswith("TLS") else None

    def cipher(self) -> str | None:
        c = lib.SSL_get_current_cipher(self._ssl)
        return None if c == ffi.NULL else ffi.string(lib.SSL_CIPHER_get_name(c)).decode()

    def _failure(self, err: int) -> TLSFailure:
        code = lib.ERR_get_error() if err == _SSL_ERROR else 0
        lib.ERR_clear_error()
        text = lib.ERR_reason_error_string(code) if code else ffi.NULL
        reason = ffi.string(text).decode().upper().replace(" ", "_") if text != ffi.NULL else ""
        if reason == "CERTIFICATE_VERIFY_FAILED":
            verify = lib.SSL_get_verify_result(self._ssl)
            message = ffi.string(lib.X509_verify_cert_error_string(verify)).decode()
            return TLSFailure(_VERIFY_REASONS.get(verify, "cert_invalid"), message)
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return TLSFailure("no_client_cert", "the client sent no certificate")
        if reason in ("HTTP_REQUEST", "WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL"):
            detail = "plain HTTP sent to the TLS port" if reason == "HTTP_REQUEST" else "not TLS"
            return TLSFailure("not_tls", detail)
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
            return TLSFailure("peer_alert", "the client refused: " + reason.lower())
        if reason == "UNEXPECTED_EOF_WHILE_READING" or (not reason and err != _SSL_ERROR):
            return TLSFailure("eof", "connection closed during the handshake")
        return TLSFailure("protocol", (reason or f"ssl error {err}").lower())
