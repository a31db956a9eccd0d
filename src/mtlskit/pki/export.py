"""PKCS#12 export: a certificate, its key and CA certificates in one .p12 file.

With a password the file uses PBES2 with AES-256-CBC and a SHA-256 MAC
(cryptography's ``BestAvailableEncryption``), which OpenSSL 3 reads by default;
OpenSSL 1.x's legacy RC2/3DES is not used. Without a password the key is stored
unencrypted: only for tools that cannot take a password, and the file is 0600.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from mtlskit.errors import PKIError
from mtlskit.pki.keys import PrivateKey, key_matches, load_private_key
from mtlskit.pki.load import load_certificates
from mtlskit.pki.store import KEY_MODE, read_file, write_atomic

__all__ = ["export_pkcs12_files", "pkcs12_bytes"]


def pkcs12_bytes(
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    ca_certificates: Sequence[x509.Certificate] = (),
    password: bytes | None = None,
    name: str | None = None,
) -> bytes:
    """DER PKCS#12 holding ``key``, ``certificate`` and ``ca_certificates``."""
    if not key_matches(key, certificate.public_key()):
        raise PKIError(
            "private key does not match certificate",
            hint="use the key that was made with this certificate",
        )
    if name is None:
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cns[0].value) if cns else "mtlskit"
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        name.encode(), key, certificate, list(ca_certificates) or None, encryption
    )


def export_pkcs12_files(
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ca_file: str | os.PathLike[str] | None = None,
    password: bytes | None = None,
    key_passphrase: bytes | None = None,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Read PEM/DER files, write ``out`` (0600, atomically). ``cert_file`` may be a bundle."""
    certs = load_certificates(read_file(cert_file, "certificate"), file=cert_file)
    key = load_private_key(
        read_file(key_file, "private key"), file=key_file, passphrase=key_passphrase
    )
    extra = list(certs[1:])
    if ca_file is not None:
        extra += load_certificates(read_file(ca_file, "CA certificate"), file=ca_file)
    if not key_matches(key, certs[0].public_key()):
        raise PKIError(
            f"private key does not match certificate {os.fspath(cert_file)}",
            file=key_file,
            hint="use the key that was made with this certificate",
        )
    data = pkcs12_bytes(certs[0], key, ca_certificates=extra, password=password, name=name)
    return write_atomic(out, data, KEY_MODE, force=force)
