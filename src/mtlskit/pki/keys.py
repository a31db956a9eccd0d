"""Private keys: generation by key type, loading (PEM/DER, encrypted), serialization."""

from __future__ import annotations

import os
from typing import Literal, TypeAlias

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
    "describe_key",
    "describe_pem_block",
    "generate_key",
    "key_matches",
    "load_private_key",
    "private_key_pem",
    "public_key_der",
    "signature_hash",
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
    if is_pem and b"PRIVATE KEY-----" not in data:
        kind = describe_pem_block(data)
        raise PKIError(
            f"expected a private key, found {kind}",
            file=file,
            hint="pass the .key file",
        )
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
        raise PKIError(
            "not a PEM or DER private key", file=file, hint="pass a private key file"
        ) from exc
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
    return {
        "CERTIFICATE": "a certificate",
        "CERTIFICATE REQUEST": "a certificate request (CSR)",
        "NEW CERTIFICATE REQUEST": "a certificate request (CSR)",
        "X509 CRL": "a CRL",
        "PUBLIC KEY": "a public key",
    }.get(label, f"a PEM {label!r} block")
