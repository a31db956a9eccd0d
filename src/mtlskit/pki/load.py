"""The one loader of PKI files: certificates, CSRs, a certificate with its key.

Every command reads files through here (keys through
:func:`mtlskit.pki.keys.load_private_key`, CRLs through :func:`mtlskit.pki.crl.load_crl`),
so a wrong file is named the same way everywhere: ``expected a certificate, found a
certificate request (CSR) (web.csr): …`` (:func:`mtlskit.pki.keys.wrong_contents`).
"""

from __future__ import annotations

import os

from cryptography import x509

from mtlskit.errors import PKIError, Setting
from mtlskit.pki.keys import (
    PrivateKey,
    key_matches,
    load_private_key,
    looks_like_pkcs12,
    wrong_contents,
)
from mtlskit.pki.store import read_file

__all__ = [
    "check_key_pair",
    "load_certificate",
    "load_certificates",
    "load_csr",
    "read_certificates",
    "read_csr",
    "read_key_pair",
]


def load_certificates(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> list[x509.Certificate]:
    """All certificates in PEM (a bundle) or DER ``data``."""
    if b"-----BEGIN" in data:
        if (
            b"-----BEGIN CERTIFICATE-----" not in data
            and b"-----BEGIN TRUSTED CERTIFICATE" not in data
        ):
            raise wrong_contents("a certificate", data, file=file)
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise PKIError(
                f"broken PEM certificate: {exc}", file=file, hint="re-export it"
            ) from exc
    try:
        if looks_like_pkcs12(data):
            raise ValueError("PKCS#12")
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise wrong_contents("a certificate", data, file=file) from None


def load_certificate(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> x509.Certificate:
    """The first certificate in ``data``."""
    return load_certificates(data, file=file)[0]


def read_certificates(
    path: str | os.PathLike[str], what: str = "certificate"
) -> list[x509.Certificate]:
    """All certificates in the file ``path`` (``what`` names it when it is missing)."""
    return load_certificates(read_file(path, what), file=path)


def load_csr(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER."""
    if b"-----BEGIN" in data:
        if b"CERTIFICATE REQUEST-----" not in data:
            raise wrong_contents("a certificate request (CSR)", data, file=file)
        try:
            return x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise PKIError(f"broken PEM CSR: {exc}", file=file, hint="re-create it") from exc
    try:
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise wrong_contents("a certificate request (CSR)", data, file=file) from None


def read_csr(path: str | os.PathLike[str]) -> x509.CertificateSigningRequest:
    return load_csr(read_file(path, "certificate request"), file=path)


def read_key_pair(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None,
    *,
    passphrase: bytes | None = None,
) -> tuple[list[x509.Certificate], PrivateKey]:
    """A certificate (with the chain after it) and its private key, from ``key`` or, when
    ``key`` is None, from the same PEM file; every way they can be wrong is one error."""
    data = read_file(cert, "certificate")
    certs = load_certificates(data, file=cert)
    if key is None:
        if b"PRIVATE KEY-----" not in data:
            beside = os.path.splitext(os.fspath(cert))[0] + ".key"
            raise PKIError(
                f"no private key for the certificate: {beside} does not exist and the "
                "certificate file holds no key",
                file=cert,
                hint=("pass its key with ", Setting("key", "FILE")),
            )
        key_data, key_file = data, cert
    else:
        key_data, key_file = read_file(key, "private key"), key
    private_key = load_private_key(key_data, file=key_file, passphrase=passphrase)
    if not key_matches(private_key, certs[0].public_key()):
        raise PKIError(
            "private key does not match certificate",
            file=key_file,
            hint="use the key that was made with this certificate",
        )
    return certs, private_key


def check_key_pair(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None,
    *,
    passphrase: bytes | None = None,
) -> None:
    """Raise the error :func:`read_key_pair` finds; for explaining why a TLS library
    refused the files (``ssl``'s ``PEM lib`` says nothing)."""
    read_key_pair(cert, key, passphrase=passphrase)
