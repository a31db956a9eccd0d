"""Revocation at a cost that does not grow with the CRL: its serial numbers in a set.

OpenSSL's own CRL check (``X509_V_FLAG_CRL_CHECK``, the CRL in the context's
X509_STORE) costs more with every entry: a full P-256 handshake fell from 990 to
162 per server CPU-second with a 100,000-entry CRL (bench/revocation.py), and by a
third with 3,000 entries. So the default TLS engine does not hand the CRL to
OpenSSL. The CRL file stays the source of truth: at every load and reload it is
read, its signature checked against the CA in the bundle that issued it
(:func:`mtlskit.pki.crl.check_crl`; :func:`mtlskit.server.reload.check_files` also
refuses one past its nextUpdate), and its serial numbers go into a frozenset.
The engine's verify callback (server/openssl_engine.py) then checks the client's
certificate in the handshake with :meth:`RevokedSerials.check`: one set look-up,
and the same outcomes OpenSSL's check gives, with the same codes (so the same
alert and log line).

The stdlib engine keeps OpenSSL's check (the ``ssl`` module has no verify
callback): there the cost still grows with the CRL.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.errors import PKIError
from mtlskit.pki.crl import check_crl, read_crl
from mtlskit.pki.load import read_certificates

__all__ = ["Revocation", "RevokedSerials"]


class Revocation(enum.Enum):
    """What the CRL says of a client certificate: what OpenSSL's CRL check would say."""

    GOOD = "good"
    REVOKED = "revoked"  # X509_V_ERR_CERT_REVOKED
    NO_CRL = "no_crl"  # the certificate's issuer is not the CRL's: X509_V_ERR_UNABLE_TO_GET_CRL
    CRL_EXPIRED = "crl_expired"  # past nextUpdate: X509_V_ERR_CRL_HAS_EXPIRED
    CRL_NOT_YET_VALID = "crl_not_yet_valid"  # before thisUpdate: X509_V_ERR_CRL_NOT_YET_VALID


@dataclass(frozen=True, slots=True)
class RevokedSerials:
    """The serial numbers one CA's CRL revokes, built once per load of the files."""

    issuer_der: bytes  # the CA certificate (in the bundle) that signed the CRL
    issuer_name_unique: bool  # no other certificate of the bundle has its subject
    serials: frozenset[int]  # magnitudes (the sign of a serial is ignored: see from_files)
    last_update: float  # POSIX seconds
    next_update: float | None

    @classmethod
    def from_files(cls, crl: str | os.PathLike[str], ca: str | os.PathLike[str]) -> RevokedSerials:
        """Read ``crl``, check its signature against the CA of ``ca`` that issued it.

        Its dates are checked in each handshake (as OpenSSL does), and at load by
        :func:`mtlskit.server.reload.check_files`. Raises :class:`~mtlskit.errors.PKIError`.
        """
        revocations = read_crl(crl)
        cas = read_certificates(ca)
        issuer = check_crl(revocations, cas, file=crl, check_time=False)
        try:
            revocations.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        except x509.ExtensionNotFound:
            pass
        else:
            raise PKIError(
                "a delta CRL lists only recent revocations",
                file=crl,
                hint="pass the CA's full CRL (mtlskit crl makes one)",
            )
        next_update = revocations.next_update_utc
        # Serial numbers are positive (RFC 5280 4.1.2.2); should one be negative, its
        # magnitude revokes both signs: never a revoked certificate let through.
        return cls(
            issuer_der=issuer.public_bytes(serialization.Encoding.DER),
            issuer_name_unique=sum(c.subject == issuer.subject for c in cas) == 1,
            serials=frozenset(abs(entry.serial_number) for entry in revocations),
            last_update=revocations.last_update_utc.timestamp(),
            next_update=next_update.timestamp() if next_update is not None else None,
        )

    def check(self, serial: int, by_issuer: bool, now: float) -> Revocation:
        """The status at ``now`` of the certificate ``serial``; ``by_issuer``: whether the
        CA that signed the CRL issued it."""
        if not by_issuer:
            return Revocation.NO_CRL
        if now < self.last_update:
            return Revocation.CRL_NOT_YET_VALID
        if self.next_update is not None and now > self.next_update:
            return Revocation.CRL_EXPIRED
        return Revocation.REVOKED if abs(serial) in self.serials else Revocation.GOOD
