"""Reading certificates and CSRs from PEM or DER, with one-line errors."""

from __future__ import annotations

import os

from cryptography import x509

from mtlskit.errors import PKIError
from mtlskit.pki.keys import describe_pem_block
from mtlskit.pki.store import read_file

__all__ = ["load_certificate", "load_certificates", "load_csr", "read_certificates", "read_csr"]


def load_certificates(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> list[x509.Certificate]:
    """All certificates in PEM (a bundle) or DER ``data``."""
    if b"-----BEGIN" in data:
        if (
            b"-----BEGIN CERTIFICATE-----" not in data
            and b"-----BEGIN TRUSTED CERTIFICATE" not in data
        ):
            raise PKIError(
                f"expected a certificate, found {describe_pem_block(data)}",
                file=file,
                hint="pass a .crt file",
            )
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise PKIError(
                f"broken PEM certificate: {exc}", file=file, hint="re-export it"
            ) from exc
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise PKIError(
            "not a PEM or DER certificate", file=file, hint="pass a certificate file (.crt/.pem)"
        ) from None


def load_certificate(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> x509.Certificate:
    """The first certificate in ``data``."""
    return load_certificates(data, file=file)[0]


def read_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    return load_certificates(read_file(path, "certificate"), file=path)


def load_csr(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER."""
    if b"-----BEGIN" in data:
        if b"CERTIFICATE REQUEST-----" not in data:
            raise PKIError(
                f"expected a certificate request (CSR), found {describe_pem_block(data)}",
                file=file,
                hint="pass a .csr file",
            )
        try:
            return x509.load_pem_x509_csr(data)
        except ValueError as exc:
            raise PKIError(f"broken PEM CSR: {exc}", file=file, hint="re-create it") from exc
    try:
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise PKIError(
            "not a PEM or DER certificate request", file=file, hint="pass a CSR file (.csr)"
        ) from None


def read_csr(path: str | os.PathLike[str]) -> x509.CertificateSigningRequest:
    return load_csr(read_file(path, "certificate request"), file=path)
