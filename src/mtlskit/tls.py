"""SSLContext factories: the only place that sets ssl flags. Secure by default.

Both return a plain :class:`ssl.SSLContext`, which httpx, requests/urllib3,
aiohttp and asyncio accept as is::

    ctx = client_context("certs/ca.crt", "certs/client.crt", "certs/client.key")
    httpx.get("https://localhost:8443", verify=ctx)

:mod:`mtlskit.pki.store` (pathlib, tempfile) is imported only to word a missing-file
error: ``mtlskit get`` loads this module and needs neither.
"""

from __future__ import annotations

import os
import ssl

from mtlskit.errors import ConfigError, PKIError

__all__ = ["SERVER_TLS12_CIPHERS", "client_context", "pinning_context", "server_context"]

PathLike = str | os.PathLike[str]

# What a server offers a TLS 1.2 client: forward-secret AEAD suites only (ECDHE with
# AES-GCM or ChaCha20-Poly1305, Mozilla's "intermediate" profile); no CBC suite, which
# scanners flag as legacy. TLS 1.3 suites are all AEAD and forward-secret already.
# Both server TLS engines read it (server/openssl_engine.py).
SERVER_TLS12_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def _check_file(path: PathLike, what: str) -> str:
    name = os.fspath(path)
    if not os.path.isfile(name):
        from mtlskit.pki.store import missing_hint

        raise PKIError(f"{what} not found", file=name, hint=missing_hint(name))
    return name


# ssl refuses a wrong file with "PEM lib" or loads it silently: the shared loader
# (mtlskit.pki.load) then raises the error that names what the file holds. Imported on
# failure only, so a request that works never loads cryptography.
def _explain_chain(cert: str, key: str | None, password: bytes | None) -> None:
    from mtlskit.pki.load import check_key_pair

    check_key_pair(cert, key, passphrase=password)


def _explain_ca(cafile: str) -> None:
    from mtlskit.pki.load import read_certificates

    read_certificates(cafile, "CA certificate")


def _harden(ctx: ssl.SSLContext, min_version: ssl.TLSVersion) -> None:
    if min_version < ssl.TLSVersion.TLSv1_2:
        raise ConfigError("TLS older than 1.2 is not supported", hint="use TLS 1.2 or 1.3")
    ctx.minimum_version = min_version
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # Python 3.13 adds VERIFY_X509_STRICT to its defaults, which rejects CAs made by
    # plain `openssl req -x509` (no keyUsage), such as the seed's: keep OpenSSL's
    # standard chain checks (signatures, validity, CA:TRUE, purpose) instead.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)


def _load_chain(
    ctx: ssl.SSLContext, cert: PathLike, key: PathLike | None, password: bytes | None
) -> None:
    certfile = _check_file(cert, "certificate")
    keyfile = _check_file(key, "private key") if key is not None else None
    try:
        ctx.load_cert_chain(certfile, keyfile, password=password or (lambda: b""))
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", "") or ""
        if reason == "KEY_VALUES_MISMATCH":
            raise PKIError(
                "private key does not match certificate",
                file=keyfile or certfile,
                hint="use the key that was made with this certificate",
            ) from exc
        if "BAD_DECRYPT" in reason or "bad decrypt" in str(exc) or "PASSWORD" in reason:
            raise PKIError(
                "cannot decrypt private key", file=keyfile, hint="give the right passphrase"
            ) from exc
        _explain_chain(certfile, keyfile, password)
        raise PKIError(
            f"cannot load certificate/key: {reason or exc}",
            file=keyfile or certfile,
            hint="check that both are PEM and belong together",
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca: PathLike, crl: PathLike | None) -> None:
    cafile = _check_file(ca, "CA certificate")
    try:
        ctx.load_verify_locations(cafile=cafile)
    except ssl.SSLError as exc:
        _explain_ca(cafile)
        raise PKIError(
            "cannot load CA certificates", file=cafile, hint="pass a PEM file of CA certificates"
        ) from exc
    if not ctx.cert_store_stats()["x509"]:  # ssl loads a file without certificates silently
        _explain_ca(cafile)
        raise PKIError(
            "no certificate in the CA file", file=cafile, hint="pass a PEM file of CA certificates"
        )
    if crl is not None:
        crlfile = _check_file(crl, "CRL")
        # ssl ignores CRLs given as cadata, so we load them from a file (CPython ssl docs);
        # the check flag must be on the context itself.
        try:
            ctx.load_verify_locations(cafile=crlfile)
        except ssl.SSLError as exc:
            raise PKIError("cannot load CRL", file=crlfile, hint="pass a PEM CRL") from exc
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(
    cert: PathLike,
    key: PathLike,
    ca: PathLike | None,
    *,
    crl: PathLike | None = None,
    require_client_cert: bool = True,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """A server context that requires and verifies client certificates signed by ``ca``.

    ``require_client_cert=False`` (the CA service's anonymous routes; no ``serve``
    option sets it) still verifies a certificate when one is sent.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, min_version)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(SERVER_TLS12_CIPHERS)
    _load_chain(ctx, cert, key, password)
    if ca is not None:
        _load_ca(ctx, ca, crl)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ConfigError("a CA is needed to verify client certificates", hint="pass the CA file")
    return ctx


def client_context(
    ca: PathLike | bytes,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    *,
    check_hostname: bool = True,
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
    password: bytes | None = None,
) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (a file, or PEM bytes) and presents
    ``cert``/``key`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, min_version)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if isinstance(ca, bytes):
        try:
            ctx.load_verify_locations(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise PKIError("cannot load CA certificates from PEM data") from exc
    else:
        _load_ca(ctx, ca, None)
    if cert is not None:
        _load_chain(ctx, cert, key, password)
    return ctx


def pinning_context(min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """A client context that does NOT verify the server: only for fetching a root CA
    certificate that the caller then accepts by its SHA-256 fingerprint alone
    (``mtlskit ca bootstrap``, like ``step ca bootstrap``). Never send secrets over it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx, min_version)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
