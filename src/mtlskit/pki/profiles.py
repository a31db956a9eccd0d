"""Certificate profiles: the ONE place that decides a certificate's extensions.

=============  =======  ====================================  ======================
profile        CA       keyUsage (critical)                   extendedKeyUsage
=============  =======  ====================================  ======================
ca             yes      keyCertSign, cRLSign, digitalSig.     (none)
server         no       digitalSignature (+keyEncipherment)   serverAuth
client         no       digitalSignature (+keyEncipherment)   clientAuth
server-client  no       digitalSignature (+keyEncipherment)   serverAuth, clientAuth
=============  =======  ====================================  ======================

keyEncipherment is added for RSA keys only (RSA key transport in TLS 1.2).
Every certificate gets a subjectKeyIdentifier and, when it has an issuer other
than itself, an authorityKeyIdentifier from the issuer's key.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlskit.errors import ConfigError
from mtlskit.pki.keys import PublicKey

Profile: TypeAlias = Literal["server", "client", "server-client"]
PROFILES: tuple[str, ...] = ("server", "client", "server-client")

# Leaves live at most this long unless asked for explicitly (the CA/B Forum's 397 days).
MAX_LEAF_DAYS = 397
DEFAULT_LEAF_DAYS = 365
DEFAULT_CA_DAYS = 3650

__all__ = [
    "DEFAULT_CA_DAYS",
    "DEFAULT_LEAF_DAYS",
    "MAX_LEAF_DAYS",
    "PROFILES",
    "Profile",
    "ca_extensions",
    "check_profile",
    "leaf_extensions",
]

_EKUS = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "server-client": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}

Extensions: TypeAlias = list[tuple[x509.ExtensionType, bool]]


def check_profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}", hint=f"use one of {', '.join(PROFILES)}")
    return profile  # type: ignore[return-value]


def _key_usage(*, ca: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ids(public_key: PublicKey, issuer: x509.Certificate | None) -> Extensions:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    out: Extensions = [(ski, False)]
    if issuer is not None:
        try:
            issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
        out.append((aki, False))
    return out


def ca_extensions(
    public_key: PublicKey, *, path_length: int | None, issuer: x509.Certificate | None
) -> Extensions:
    """Extensions of a CA certificate; ``issuer`` is None for a self-signed root."""
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_key_usage(ca=True, key_encipherment=False), True),
        *_ids(public_key, issuer),
    ]


def leaf_extensions(
    profile: Profile,
    public_key: PublicKey,
    *,
    sans: list[x509.GeneralName],
    issuer: x509.Certificate,
    crl_url: str | None = None,
) -> Extensions:
    """Extensions of a server, client or server-client certificate; ``crl_url`` adds a
    CRL distribution point (the CA service's ``URL/crl`` when it has a public URL)."""
    if profile in ("server", "server-client") and not sans:
        raise ConfigError(
            "a server certificate needs at least one SAN",
            hint="add --san with the name clients connect to, e.g. --san localhost",
        )
    out: Extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(ca=False, key_encipherment=isinstance(public_key, rsa.RSAPublicKey)), True),
        (x509.ExtendedKeyUsage(_EKUS[profile]), False),
    ]
    if sans:
        out.append((x509.SubjectAlternativeName(sans), False))
    out.extend(_ids(public_key, issuer))
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        out.append((x509.CRLDistributionPoints([point]), False))
    return out
