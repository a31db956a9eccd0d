"""Revocation: RFC 5280 reasons, signed CRLs from the inventory, and checking CRLs.

::

    ca.inventory.revoke("1f3a…", "keyCompromise")   # mark it in the CA's database
    crl = make_crl(ca)                           # CRL number +1, nextUpdate in 30 days
    write_crl(crl, "certs/ca.crl")
    check_crl(read_crl("certs/ca.crl"), [ca.certificate])   # signed by this CA, not expired
    is_revoked(cert, crl)                        # the entry, or None

OpenSSL refuses *every* client once the CRL it was given has passed its
nextUpdate (``X509_V_ERR_CRL_HAS_EXPIRED``), so the CRL must be re-made before
then (``mtlskit status`` shows the days left, ``serve --metrics-port`` exports them).

This module imports neither the CA nor its inventory (the inventory reads a CA
folder's ``ca.crl`` with it when adopting the folder); what it needs of them is
spelled out by the protocols :class:`CRLIssuer`, :class:`RevocationSource` and
:class:`RevokedRecord`, which :class:`~mtlskit.pki.ca.CA`,
:class:`~mtlskit.pki.inventory.Inventory` and its ``Record`` fulfil.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki.keys import PrivateKey, signature_hash, wrong_contents
from mtlskit.pki.names import format_key_id, key_id
from mtlskit.pki.store import CERT_MODE, read_file, write_atomic

__all__ = [
    "CRL_NAME",
    "DEFAULT_CRL_DAYS",
    "REASONS",
    "CRLIssuer",
    "RevocationSource",
    "RevokedRecord",
    "build_crl",
    "check_crl",
    "crl_pem",
    "is_revoked",
    "load_crl",
    "make_crl",
    "parse_reason",
    "read_crl",
    "write_crl",
]

CRL_NAME = "ca.crl"
DEFAULT_CRL_DAYS = 30
BACKDATE = dt.timedelta(minutes=1)

# RFC 5280 5.3.1 reason names (removeFromCRL belongs to delta CRLs only).
REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
}


class RevokedRecord(Protocol):
    """A certificate as a CRL lists it (an inventory ``Record`` is one)."""

    @property
    def serial_int(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def not_after(self) -> dt.datetime: ...
    @property
    def revoked_at(self) -> dt.datetime | None: ...
    @property
    def reason(self) -> str | None: ...


class RevocationSource(Protocol):
    """Where a CA keeps its revocations and CRL numbers (its ``Inventory``)."""

    def revoked(self) -> Sequence[RevokedRecord]: ...
    def next_crl_number(self) -> int: ...


class CRLIssuer(Protocol):
    """What signs a CRL: a CA's certificate and key, and the inventory ``make_crl`` reads
    (:class:`mtlskit.pki.ca.CA` is one; ``inventory`` is None for a CA in memory)."""

    @property
    def certificate(self) -> x509.Certificate: ...
    @property
    def private_key(self) -> PrivateKey: ...
    @property
    def inventory(self) -> RevocationSource | None: ...


def _squash(text: str) -> str:
    return text.replace("-", "").replace("_", "").replace(" ", "").lower()


def parse_reason(text: str) -> x509.ReasonFlags:
    """``keyCompromise``, ``key-compromise`` or ``key_compromise`` → the RFC 5280 reason."""
    for name, flag in REASONS.items():
        if _squash(name) == _squash(text):
            return flag
    raise ConfigError(
        f"unknown revocation reason {text!r}", hint=f"use one of {', '.join(REASONS)}"
    )


def _aki(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())  # type: ignore[arg-type]


def build_crl(
    ca: CRLIssuer,
    revoked: Iterable[RevokedRecord],
    *,
    number: int,
    days: int = DEFAULT_CRL_DAYS,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``revoked``, numbered ``number``.

    Entries of certificates that have expired are left out (RFC 5280 5.1.2.6
    allows it): a client presenting one is refused for its dates anyway.
    """
    if days <= 0:
        raise ConfigError(f"--days must be positive, not {days}")
    now = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    entries = []
    for rec in revoked:
        if rec.status != "revoked" or rec.not_after < now:
            continue
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(rec.serial_int)
            .revocation_date(rec.revoked_at or now)
        )
        if rec.reason and rec.reason != x509.ReasonFlags.unspecified.value:
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(rec.reason)), False)
        entries.append(entry.build())
    # The entries go to the constructor as one list: add_revoked_certificate copies the
    # list it has so far each time, 43 s for 100,000 entries instead of 1 s.
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(ca.certificate.subject)
        .last_update(now - BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), False)
        .add_extension(_aki(ca.certificate), False)
    )
    return builder.sign(ca.private_key, signature_hash(ca.private_key))  # type: ignore[arg-type]


def make_crl(ca: CRLIssuer, *, days: int = DEFAULT_CRL_DAYS) -> x509.CertificateRevocationList:
    """The next CRL of ``ca`` from its inventory (a CA loaded with ``CA.load``)."""
    inv = ca.inventory
    if inv is None:
        raise PKIError("this CA has no inventory", hint="load it with CA.load")
    if days <= 0:
        raise ConfigError(f"--days must be positive, not {days}")
    revoked = inv.revoked()
    return build_crl(ca, revoked, number=inv.next_crl_number(), days=days)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def write_crl(crl: x509.CertificateRevocationList, path: str | os.PathLike[str]) -> Path:
    """Write ``crl`` as PEM, atomically (a server reloading it never sees half a file)."""
    return write_atomic(path, crl_pem(crl), CERT_MODE)


def load_crl(
    data: bytes, *, file: str | os.PathLike[str] | None = None
) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER."""
    try:
        if b"-----BEGIN" in data:
            if b"-----BEGIN X509 CRL-----" not in data:
                raise wrong_contents("a CRL", data, file=file)
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise wrong_contents("a CRL", data, file=file) from None


def read_crl(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    return load_crl(read_file(path, "CRL"), file=path)


def check_crl(
    crl: x509.CertificateRevocationList,
    ca_certs: Sequence[x509.Certificate],
    *,
    file: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
    check_time: bool = True,
) -> x509.Certificate:
    """The CA in ``ca_certs`` that signed ``crl``; refuse a CRL of another key or out of date.

    OpenSSL would refuse every client with such a CRL, so a server must not load it.
    """
    issuer = crl.issuer.rfc4514_string()
    named = [c for c in ca_certs if c.subject == crl.issuer]
    for ca in named:
        try:
            ok = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, InvalidSignature):
            ok = False
        if ok:
            break
    else:
        cas = ", ".join(c.subject.rfc4514_string() for c in ca_certs) or "none"
        if named:
            # Two CAs of one name (every CA once made alike was CN=CA): name the keys.
            theirs = _crl_key_id(crl) or "key unknown"
            what = (
                f"CRL names {issuer} as issuer but is signed by another key ({theirs}) than "
                f"that CA's ({key_id(named[0])}): another CA with the same name"
            )
        else:
            what = f"CRL was issued by {issuer}, not by the CA ({cas})"
        raise PKIError(what, file=file, hint="make it with the CA's key: mtlskit crl --ca-dir DIR")
    if check_time:
        now = now or dt.datetime.now(dt.UTC)
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise PKIError(
                f"CRL expired on {crl.next_update_utc:%Y-%m-%d %H:%M} UTC (nextUpdate)",
                file=file,
                hint="make a fresh one with mtlskit crl",
            )
        if crl.last_update_utc > now + BACKDATE:
            raise PKIError(
                f"CRL is not valid before {crl.last_update_utc:%Y-%m-%d %H:%M} UTC (thisUpdate)",
                file=file,
                hint="check the clocks of this machine and the CA's",
            )
    return ca


def _crl_key_id(crl: x509.CertificateRevocationList) -> str | None:
    """The key that signed a CRL, as :func:`mtlskit.pki.names.key_id` names a CA's."""
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if not aki.key_identifier:
        return None
    return format_key_id(aki.key_identifier)


def is_revoked(
    cert: x509.Certificate, crl: x509.CertificateRevocationList
) -> x509.RevokedCertificate | None:
    """The CRL entry of ``cert``, or None. Only a CRL from ``cert``'s issuer can revoke it.

    This does not check the CRL's signature: call :func:`check_crl` first.
    """
    if crl.issuer != cert.issuer:
        return None
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number)
