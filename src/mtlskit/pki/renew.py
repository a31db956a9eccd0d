"""Renewal against the inventory: same subject, SANs and profile, a new serial.

::

    result = renew_file(ca, "certs/server.crt")          # only when due
    result.renewed, result.due                            # False, 2027-…: cron-friendly

A certificate is due once 2/3 of its lifetime has passed (a 365-day certificate
after ~243 days), leaving a third of it to retry and to roll it out. The new
certificate gets the old one's lifetime (clipped to the CA's), and replaces the
file atomically: a server reloading it sees the old or the new file, never half.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mtlskit.errors import PKIError
from mtlskit.pki.ca import CA, cert_pem
from mtlskit.pki.inventory import check_issued_by, profile_of, serial_hex
from mtlskit.pki.keys import PrivateKey, PublicKey, generate_key, private_key_pem
from mtlskit.pki.load import load_certificates
from mtlskit.pki.store import CERT_MODE, KEY_MODE, read_file, write_many

__all__ = ["RENEW_FRACTION", "RenewResult", "due_at", "key_type_of", "renew_file"]

RENEW_FRACTION = 2 / 3


@dataclass(frozen=True)
class RenewResult:
    renewed: bool
    old: x509.Certificate
    due: dt.datetime
    new: x509.Certificate | None = None
    key_file: Path | None = None


def due_at(cert: x509.Certificate) -> dt.datetime:
    """When ``cert`` is due for renewal: 2/3 into its lifetime."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * RENEW_FRACTION


def key_type_of(key: PublicKey | PrivateKey) -> str:
    """The :data:`~mtlskit.pki.keys.KEY_TYPES` name of a key, to make a new one like it."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "p384" if key.curve.key_size >= 384 else "p256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise PKIError(f"cannot make a new key like {type(key).__name__}", hint="drop --new-key")


def renew_file(
    ca: CA,
    cert_file: str | os.PathLike[str],
    *,
    new_key: bool = False,
    key_file: str | os.PathLike[str] | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
) -> RenewResult:
    """Renew the certificate in ``cert_file`` when due (or ``force``), in place.

    Refused, with nothing changed: a certificate another CA signed, one this CA's
    inventory does not know, and a revoked one. With ``new_key`` a key of the same
    type replaces ``key_file`` (default: the certificate's name with ``.key``).
    """
    inv = ca.inventory
    if inv is None:
        raise PKIError("this CA has no inventory", hint="load it with CA.load")
    path = Path(cert_file)
    certs = load_certificates(read_file(path, "certificate"), file=path)
    old, rest = certs[0], certs[1:]
    ca_name = ca.certificate.subject.rfc4514_string()
    check_issued_by(
        old, ca.certificate, file=path, hint="renew it with --ca-dir of the CA that signed it"
    )
    rec = inv.find(old)
    if rec is None:
        raise PKIError(
            f"CA {ca_name} has no record of certificate {serial_hex(old.serial_number)}",
            file=path,
            hint="issue a new one with mtlskit issue (the inventory only renews what it issued)",
        )
    if rec.status == "revoked":
        raise PKIError(
            f"certificate {rec.serial} is revoked",
            file=path,
            hint="a revoked certificate is not renewed: issue a new one with mtlskit issue",
        )
    now = now or dt.datetime.now(dt.UTC)
    due = due_at(old)
    if now < due and not force:
        return RenewResult(False, old, due)

    key: PrivateKey | None = generate_key(key_type_of(old.public_key())) if new_key else None  # type: ignore[arg-type]
    public_key: PublicKey = key.public_key() if key else old.public_key()  # type: ignore[assignment]
    try:
        sans = list(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    lifetime = old.not_valid_after_utc - old.not_valid_before_utc
    new = ca.sign_public_key(
        public_key,
        old.subject,
        profile=rec.profile if rec.profile != "unknown" else profile_of(old),
        sans=sans,
        lifetime=lifetime,
        renewed_from=rec.serial,
    )
    files: list[tuple[str | os.PathLike[str], bytes, int]] = [
        (path, cert_pem(new) + b"".join(cert_pem(c) for c in rest), CERT_MODE)
    ]
    out_key: Path | None = None
    if key is not None:
        out_key = Path(key_file) if key_file is not None else path.with_suffix(".key")
        files.append((out_key, private_key_pem(key), KEY_MODE))
    write_many(files, force=True)
    return RenewResult(True, old, due, new, out_key)
