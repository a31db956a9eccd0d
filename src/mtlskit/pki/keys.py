"""Private keys: generation by key type, loading (PEM/DER, encrypted), serialization."""

from __future__ import annotations

import os
import shlex
from typing import Any, Literal, TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mtlskit.errors import ConfigError, PKIError

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
KeyType: TypeAlias = Literal["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"]

KEY_TYPES: tuple[str, ...] = ("p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096")
DEFAULT_KEY_TYPE: KeyType = "p256"

__all__ = [
    "DEFAULT_KEY_TYPE",
    "KEY_TYPES",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "check_key_type",
    "describe_contents",
    "describe_key",
    "describe_pem_block",
    "generate_key",
    "key_matches",
    "load_private_key",
    "looks_like_pkcs12",
    "private_key_pem",
    "public_key_der",
    "signature_hash",
    "wrong_contents",
]


def check_key_type(key_type: str) -> KeyType:
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"unknown key type {key_type!r}", hint=f"use one of {', '.join(KEY_TYPES)}"
        )
    return key_type  # type: ignore[return-value]


def generate_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Make a new private key of ``key_type`` (see :data:`KEY_TYPES`)."""
    kt = check_key_type(key_type)
    if kt == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kt == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kt == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=int(kt[3:]))


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    """The hash a CA with ``key`` signs with: SHA-256, SHA-384 for P-384, none for Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme when ``passphrase`` is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(key: PrivateKey, public_key: object) -> bool:
    """True when ``public_key`` belongs to ``key``."""
    try:
        return public_key_der(key.public_key()) == public_key_der(public_key)  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return False


def load_private_key(
    data: bytes, *, file: str | os.PathLike[str] | None = None, passphrase: bytes | None = None
) -> PrivateKey:
    """Load a private key from PEM or DER; explain what the file is when it is not a key."""
    is_pem = b"-----BEGIN" in data
    if (is_pem and b"PRIVATE KEY-----" not in data) or not data.strip() or looks_like_pkcs12(data):
        raise wrong_contents("a private key", data, file=file)
    encrypted = b"ENCRYPTED" in data if is_pem else False
    try:
        if is_pem:
            key = serialization.load_pem_private_key(data, password=passphrase)
        else:
            key = serialization.load_der_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise PKIError(
                "private key is encrypted",
                file=file,
                hint="give its passphrase with --passphrase-file",
            ) from exc
        raise PKIError(
            "private key is not encrypted, but a passphrase was given",
            file=file,
            hint="leave out --passphrase-file",
        ) from exc
    except ValueError as exc:
        if encrypted or (passphrase is not None):
            raise PKIError(
                "cannot decrypt private key: wrong passphrase",
                file=file,
                hint="check the passphrase file",
            ) from exc
        raise wrong_contents("a private key", data, file=file) from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and others
        raise PKIError(f"cannot load private key: {exc}", file=file) from exc
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise PKIError(
            f"unsupported key algorithm {type(key).__name__}",
            file=file,
            hint="use an RSA, ECDSA or Ed25519 key",
        )
    return key


def describe_key(key: PrivateKey | PublicKey) -> str:
    """``RSA 4096``, ``ECDSA P-256``, ``Ed25519``: never the secret."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(key.curve.name, key.curve.name)}"
    return "Ed25519"


def describe_pem_block(data: bytes) -> str:
    """What the first PEM block of ``data`` holds, for an error: ``a certificate``, ``a CRL`` …"""
    start = data.find(b"-----BEGIN ")
    end = data.find(b"-----", start + 11)
    label = data[start + 11 : end].decode("ascii", "replace") if start >= 0 and end > 0 else "?"
    return _PEM_LABELS.get(label, f"a PEM {label!r} block")


_PEM_LABELS = {
    "CERTIFICATE": "a certificate",
    "TRUSTED CERTIFICATE": "a certificate",
    "CERTIFICATE REQUEST": "a certificate request (CSR)",
    "NEW CERTIFICATE REQUEST": "a certificate request (CSR)",
    "X509 CRL": "a CRL",
    "PUBLIC KEY": "a public key",
    "PRIVATE KEY": "a private key",
    "EC PRIVATE KEY": "a private key",
    "RSA PRIVATE KEY": "a private key",
    "ENCRYPTED PRIVATE KEY": "an encrypted private key",
    "PKCS7": "a PKCS#7 bundle",
}

PKCS12 = "a PKCS#12 file"
NOT_PEM_OR_DER = "neither PEM nor DER"


def looks_like_pkcs12(data: bytes) -> bool:
    """A DER PFX: SEQUENCE { INTEGER 3, ContentInfo { OID pkcs7-data … } }."""
    return data[:1] == b"\x30" and b"\x02\x01\x03" in data[:8]


def describe_contents(data: bytes) -> str:
    """What a file holds, in words for an error: ``a certificate``, ``a certificate
    request (CSR)``, ``a private key``, ``a CRL``, ``a PKCS#12 file``, ``an empty file``…
    (:data:`NOT_PEM_OR_DER` when it is none of them). PEM by its first block's label,
    DER by which parser accepts it."""
    from cryptography import x509

    if not data.strip():
        return "an empty file"
    if b"-----BEGIN " in data:
        return describe_pem_block(data)
    parsers: tuple[tuple[str, Any], ...] = (
        ("a certificate", x509.load_der_x509_certificate),
        ("a certificate request (CSR)", x509.load_der_x509_csr),
        ("a CRL", x509.load_der_x509_crl),
        ("a public key", serialization.load_der_public_key),
    )
    for kind, parse in parsers:
        try:
            parse(data)
        except Exception:  # ValueError, UnsupportedAlgorithm: not this kind
            continue
        return kind
    if looks_like_pkcs12(data):
        return PKCS12
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:
        return "an encrypted private key"
    except Exception:  # ValueError, UnsupportedAlgorithm: not a key
        return NOT_PEM_OR_DER
    return "a private key"


# The next step when a file holds something else than the command expects.
_WHAT_TO_PASS = {
    "a certificate": "pass the certificate (.crt) file",
    "a certificate request (CSR)": "pass the .csr file (mtlskit csr create makes one)",
    "a private key": "pass the private key (.key) file",
    "a CRL": "pass the .crl file (mtlskit crl makes one)",
}


def wrong_contents(
    expected: str, data: bytes, *, file: str | os.PathLike[str] | None = None
) -> PKIError:
    """The one error for a file that does not hold what a command expects, e.g.
    ``expected a certificate, found a certificate request (CSR) (x.csr): sign it …``.
    ``expected`` is ``a certificate``, ``a private key``, ``a CRL`` …"""
    found = describe_contents(data)
    if found == NOT_PEM_OR_DER:
        noun = expected.split(" ", 1)[1]
        what = f"not a PEM or DER {noun}"
    else:
        what = f"expected {expected}, found {found}"
    if found == PKCS12:
        source = shlex.quote(os.fspath(file)) if file is not None else "FILE"
        hint = (
            "pass the certificate and its key as PEM files: the .crt and .key it was made "
            f"from, or extract them with openssl pkcs12 -in {source} -noenc"
        )
    elif expected == "a certificate" and found == "a certificate request (CSR)":
        hint = "a CSR becomes a certificate once signed (mtlskit sign); pass the .crt file"
    else:
        hint = _WHAT_TO_PASS.get(expected, "check the file")
    return PKIError(what, file=file, hint=hint)
