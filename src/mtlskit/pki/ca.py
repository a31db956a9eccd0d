"""The private CA: create (root or intermediate), issue leaves, sign CSRs, load/save.

::

    ca = CA.create()                          # self-signed root, ECDSA P-256
    leaf = ca.issue("server", "localhost", sans=["localhost", "127.0.0.1"])
    ca.save("certs"); leaf.save("certs", "server")
    ca = CA.load("certs", db="postgresql://ca@db/ca")   # default: certs/ca.db

A CA loaded from (or saved to) a folder records every certificate it signs in
its inventory (``ca.inventory``, :mod:`mtlskit.pki.inventory`), which also keeps
serials unique across processes and replicas; a CA in memory records nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mtlskit.database import Transaction, is_postgresql_url
from mtlskit.errors import ConfigError, PKIError, Setting
from mtlskit.pki import profiles
from mtlskit.pki.inventory import Inventory, check_inventory_free, create_inventory
from mtlskit.pki.keys import (
    DEFAULT_KEY_TYPE,
    PrivateKey,
    PublicKey,
    generate_key,
    key_matches,
    load_private_key,
    private_key_pem,
    signature_hash,
)
from mtlskit.pki.load import load_certificates
from mtlskit.pki.names import parse_name, parse_sans
from mtlskit.pki.store import CERT_MODE, KEY_MODE, SeedLayout, read_file, write_many

__all__ = [
    "CA",
    "SEED_CA_SUBJECT",
    "IssuedCert",
    "cert_pem",
    "create_csr",
    "csr_pem",
    "default_ca_subject",
]

SEED_CA_SUBJECT = "/C=TH/ST=RB/O=IT Sec/CN=CA"
BACKDATE = dt.timedelta(minutes=1)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def create_csr(
    key: PrivateKey, subject: str | x509.Name, sans: Sequence[str | x509.GeneralName] = ()
) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` (like ``openssl req -new``), with the SANs as a requested extension."""
    name = parse_name(subject) if isinstance(subject, str) else subject
    parsed = [s for s in sans if isinstance(s, x509.GeneralName)]
    parsed += [n for n in parse_sans([s for s in sans if isinstance(s, str)]) if n not in parsed]
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if parsed:
        builder = builder.add_extension(x509.SubjectAlternativeName(parsed), False)
    return builder.sign(key, signature_hash(key))  # type: ignore[arg-type]


def default_ca_subject(folder: str | os.PathLike[str], *, intermediate: bool = False) -> x509.Name:
    """A name of its own for a CA made without one: ``C=TH, ST=RB, O=IT Sec, CN=<folder>
    CA <tag>``, the tag 4 random hex digits. Every CA made alike used to be ``CN=CA``, and
    two CAs of one name are told apart by their keys only (``unknown issuer CN=CA``)."""
    label = Path(folder).resolve().name or "root"
    kind = "Intermediate CA" if intermediate else "CA"
    label = label[: 64 - len(kind) - 6]  # a CN holds at most 64 characters (RFC 5280)
    base = parse_name(SEED_CA_SUBJECT)
    return x509.Name(
        [
            *(a for a in base if a.oid != NameOID.COMMON_NAME),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{label} {kind} {secrets.token_hex(2).upper()}"
            ),
        ]
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _validity(
    days: int | None,
    not_after: dt.datetime | None,
    *,
    default: int,
    cap: int | None,
    lifetime: dt.timedelta | None = None,
    not_before: dt.datetime | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The start and end of a certificate: from a minute ago (clocks differ), or from
    ``not_before``; a window given with ``not_before`` may lie wholly in the past."""
    now = _now()
    start = now - BACKDATE if not_before is None else _utc(not_before)
    if lifetime is not None:  # a renewal: exactly the old certificate's lifetime
        if days is not None or not_after is not None:
            raise ConfigError("give either a lifetime or --days/--not-after, not both")
        return start, start + lifetime
    if days is not None and not_after is not None:
        raise ConfigError("give either --days or --not-after, not both")
    if not_after is not None:
        end = _utc(not_after)
        if not_before is None and end <= now:
            raise ConfigError(
                f"--not-after {end:%Y-%m-%d} is in the past", hint="pick a later date"
            )
        if end <= start:
            raise ConfigError(
                f"not_after ({end:%Y-%m-%d %H:%M:%S}) is not after not_before "
                f"({start:%Y-%m-%d %H:%M:%S})",
                hint="give a window that ends after it starts",
            )
        return start, end
    n = default if days is None else days
    if n <= 0:
        raise ConfigError(f"--days must be positive, not {n}")
    if cap is not None and days is None and n > cap:
        n = cap
    return start, (now if not_before is None else start) + dt.timedelta(days=n)


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate with its private key (and CSR when we made one)."""

    private_key: PrivateKey | None
    certificate: x509.Certificate
    csr: x509.CertificateSigningRequest | None = None
    # Intermediate CAs a peer needs to reach the root (empty when a root signed it).
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        """The certificate, then its intermediates: what a TLS peer sends."""
        return b"".join(cert_pem(c) for c in (self.certificate, *self.chain))

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        if self.private_key is None:
            raise PKIError("this certificate was signed from a CSR: its key is not ours")
        return private_key_pem(self.private_key, passphrase)

    def files(
        self, folder: str | os.PathLike[str], name: str, passphrase: bytes | None = None
    ) -> list[tuple[Path, bytes, int]]:
        """The (path, data, mode) triples :meth:`save` writes: NAME.key, NAME.csr, NAME.crt."""
        layout = SeedLayout(Path(folder))
        out: list[tuple[Path, bytes, int]] = []
        if self.private_key is not None:
            out.append((layout.key(name), self.key_pem(passphrase), KEY_MODE))
        if self.csr is not None:
            out.append((layout.csr(name), csr_pem(self.csr), CERT_MODE))
        out.append((layout.cert(name), self.cert_pem, CERT_MODE))
        return out

    def save(
        self,
        folder: str | os.PathLike[str],
        name: str,
        *,
        force: bool = False,
        passphrase: bytes | None = None,
    ) -> list[Path]:
        return write_many(self.files(folder, name, passphrase), force=force)


class CA:
    """A certificate authority: its certificate, its key, (optionally) its chain, and
    the inventory that records what it signs (None for a CA in memory)."""

    def __init__(
        self,
        certificate: x509.Certificate,
        private_key: PrivateKey,
        *,
        chain: Sequence[x509.Certificate] = (),
        dir: str | os.PathLike[str] | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        self.certificate = certificate
        self.private_key = private_key
        self.chain = list(chain)  # issuers above this CA, nearest first
        self.dir = Path(dir) if dir is not None else None
        self.inventory = inventory

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        subject: str | x509.Name = SEED_CA_SUBJECT,
        *,
        key_type: str = DEFAULT_KEY_TYPE,
        days: int | None = None,
        not_after: dt.datetime | None = None,
        path_length: int | None = None,
        parent: CA | None = None,
    ) -> CA:
        """A new root CA, or an intermediate signed by ``parent``."""
        name = parse_name(subject) if isinstance(subject, str) else subject
        if path_length is not None and path_length < 0:
            raise ConfigError("--path-length must be 0 or more")
        key = generate_key(key_type)
        start, end = _validity(days, not_after, default=profiles.DEFAULT_CA_DAYS, cap=None)
        if parent is not None:
            try:
                bc = parent.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
                parent_path_length = bc.value.path_length
            except x509.ExtensionNotFound:  # an X.509 v1 CA: no limits
                parent_path_length = None
            if parent_path_length == 0:
                raise ConfigError(
                    "the parent CA has path length 0: it may sign leaves, not other CAs",
                    hint="sign the intermediate with a root made with --path-length 1 or more",
                )
        issuer = parent.certificate if parent else None
        if parent is not None:
            start, end = parent._clip(start, end)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        for ext, critical in profiles.ca_extensions(
            key.public_key(), path_length=path_length, issuer=issuer
        ):
            builder = builder.add_extension(ext, critical)
        if parent is not None:  # through _sign: the parent's inventory records it
            cert = parent._sign(builder)
        else:
            serial = x509.random_serial_number()
            cert = builder.serial_number(serial).sign(key, signature_hash(key))  # type: ignore[arg-type]
        chain = [parent.certificate, *parent.chain] if parent else []
        return cls(cert, key, chain=chain)

    def _clip(self, start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """A child never outlives its CA."""
        return start, min(end, self.certificate.not_valid_after_utc)

    def check_lifetime(
        self, *, days: int | None = None, not_after: dt.datetime | None = None
    ) -> None:
        """Refuse a lifetime asked for (``days`` or ``not_after``) that would end after
        this CA: signing clips it to the CA's end, which a person asking for
        ``--days 5000`` must hear about (the command line calls this before signing).
        """
        if days is None and not_after is None:
            return
        start, end = _validity(days, not_after, default=profiles.DEFAULT_LEAF_DAYS, cap=None)
        ca_end = self.certificate.not_valid_after_utc
        if end <= ca_end:
            return
        asked = (
            Setting("days", str(days))
            if days is not None
            else Setting("not_after", f"{end:%Y-%m-%d}")
        )
        at_most = (ca_end - start).days
        raise ConfigError(
            (
                asked,
                f" would end on {end:%Y-%m-%d}, after the CA's end ({ca_end:%Y-%m-%d %H:%M} UTC)",
            ),
            file=SeedLayout(self.dir).ca_cert() if self.dir is not None else None,
            hint=(
                "ask for ",
                Setting("days", str(at_most)),
                " at most (or ",
                Setting("not_after", f"{ca_end:%Y-%m-%d}"),
                "), or sign with a CA that lives longer",
            ),
        )

    # -- signing ----------------------------------------------------------------------------

    def _sign(
        self,
        builder: x509.CertificateBuilder,
        *,
        renewed_from: str | None = None,
        tx: Transaction | None = None,
    ) -> x509.Certificate:
        """Sign ``builder`` (which has no serial yet: this picks it).

        With an inventory, the serial is one it has never seen and the certificate
        is returned only once its record is committed (or written in ``tx``, which
        the caller commits).
        """

        def sign(serial: int) -> x509.Certificate:
            b = builder.serial_number(serial)
            return b.sign(self.private_key, signature_hash(self.private_key))  # type: ignore[arg-type]

        if self.inventory is None:
            return sign(x509.random_serial_number())
        return self.inventory.sign_and_record(sign, renewed_from=renewed_from, tx=tx)

    def sign_public_key(
        self,
        public_key: PublicKey,
        subject: x509.Name,
        *,
        profile: str,
        sans: Sequence[str | x509.GeneralName] = (),
        days: int | None = None,
        not_after: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
        renewed_from: str | None = None,
        crl_url: str | None = None,
        lifetime: dt.timedelta | None = None,
        tx: Transaction | None = None,
    ) -> x509.Certificate:
        """Sign a leaf certificate for ``public_key`` with the extensions of ``profile``
        (and a CRL distribution point when ``crl_url`` is given).

        The certificate lives ``days``, until ``not_after``, or exactly ``lifetime`` (a
        renewal keeps the old one's); never beyond this CA's end (clipped: see
        :meth:`check_lifetime` to refuse instead). It starts a minute ago (clocks
        differ), or at ``not_before``: then the window may lie in the past (an expired
        certificate, to test what refuses it). ``renewed_from`` (a serial in hex) is
        recorded with it: it renews that one, which the inventory marks superseded.
        ``tx``: record it in this open transaction of the inventory's database.
        """
        prof = profiles.check_profile(profile)
        names = [s for s in sans if isinstance(s, x509.GeneralName)]
        names += [n for n in parse_sans([s for s in sans if isinstance(s, str)]) if n not in names]
        start, end = _validity(
            days,
            not_after,
            default=profiles.DEFAULT_LEAF_DAYS,
            cap=profiles.MAX_LEAF_DAYS,
            lifetime=lifetime,
            not_before=not_before,
        )
        start, end = self._clip(start, end)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .not_valid_before(start)
            .not_valid_after(end)
        )
        for ext, critical in profiles.leaf_extensions(
            prof, public_key, sans=names, issuer=self.certificate, crl_url=crl_url
        ):
            builder = builder.add_extension(ext, critical)
        return self._sign(builder, renewed_from=renewed_from, tx=tx)

    def issue(
        self,
        profile: str,
        subject: str | x509.Name,
        *,
        sans: Sequence[str | x509.GeneralName] = (),
        key_type: str = DEFAULT_KEY_TYPE,
        days: int | None = None,
        not_after: dt.datetime | None = None,
    ) -> IssuedCert:
        """Make a key, a CSR and a certificate for ``profile`` ('server', 'client', …)."""
        profiles.check_profile(profile)
        name = parse_name(subject) if isinstance(subject, str) else subject
        parsed = [s for s in sans if isinstance(s, x509.GeneralName)]
        parsed += parse_sans([s for s in sans if isinstance(s, str)])
        key = generate_key(key_type)
        csr = create_csr(key, name, parsed)
        cert = self.sign_public_key(
            key.public_key(), name, profile=profile, sans=parsed, days=days, not_after=not_after
        )
        return IssuedCert(key, cert, csr, chain=self.leaf_chain)

    @property
    def leaf_chain(self) -> tuple[x509.Certificate, ...]:
        """What follows a leaf this CA signs in a bundle: this CA when it is an intermediate."""
        return (self.certificate,) if self.chain else ()

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        profile: str,
        sans: Sequence[str | x509.GeneralName] | None = None,
        days: int | None = None,
        not_after: dt.datetime | None = None,
        renewed_from: str | None = None,
    ) -> x509.Certificate:
        """Sign a CSR. Its subject is kept; SANs come from ``sans`` or else from the CSR.

        Only the subject, the key and the SANs of the CSR are used: the extensions
        come from ``profile``, never from the requester.
        """
        if not csr.is_signature_valid:
            raise PKIError(
                "the CSR's signature does not match its key",
                hint="re-create the CSR with mtlskit csr create",
            )
        names: Sequence[str | x509.GeneralName]
        if sans:
            names = sans
        else:
            try:
                names = list(
                    csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                )
            except x509.ExtensionNotFound:
                names = []
        return self.sign_public_key(
            csr.public_key(),  # type: ignore[arg-type]
            csr.subject,
            profile=profile,
            sans=names,
            days=days,
            not_after=not_after,
            renewed_from=renewed_from,
        )

    # -- files ------------------------------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        """This CA's certificate followed by its chain (for an intermediate)."""
        return b"".join(cert_pem(c) for c in [self.certificate, *self.chain])

    def key_pem(self, passphrase: bytes | None = None) -> bytes:
        return private_key_pem(self.private_key, passphrase)

    def files(
        self, folder: str | os.PathLike[str], passphrase: bytes | None = None
    ) -> list[tuple[Path, bytes, int]]:
        layout = SeedLayout(Path(folder))
        return [
            (layout.ca_key(), self.key_pem(passphrase), KEY_MODE),
            (layout.ca_cert(), self.cert_pem, CERT_MODE),
        ]

    def save(
        self,
        folder: str | os.PathLike[str],
        *,
        force: bool = False,
        passphrase: bytes | None = None,
    ) -> list[Path]:
        """Write ``ca.key`` (0600) and ``ca.crt`` (0644) into ``folder``, and its inventory
        ``ca.db``, which records what this CA signs from now on."""
        check_inventory_free(folder, self.certificate, replace=force)
        paths = write_many(self.files(folder, passphrase), force=force)
        self.inventory = create_inventory(folder, self.certificate, replace=force)
        self.dir = Path(folder)
        return paths

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        *,
        passphrase: bytes | None = None,
        db: str | os.PathLike[str] | None = None,
    ) -> CA:
        """Load ``ca.crt`` + ``ca.key`` from ``folder`` (the seed layout).

        Its inventory is ``db``, a ``postgresql://`` URL or a SQLite path (default
        ``folder/ca.db``, read on first use). A PostgreSQL database is opened here:
        migrated, claimed for this CA when it has none yet, refused when it is
        another CA's.
        """
        layout = SeedLayout(Path(folder))
        if not Path(folder).is_dir():
            raise PKIError(
                "CA folder not found",
                file=folder,
                hint="create one with mtlskit init or mtlskit ca create",
            )
        if not layout.ca_key().exists():
            raise PKIError(
                "CA folder has no ca.key: cannot sign without the CA's private key",
                file=layout.ca_key(),
                hint="point --ca-dir at the folder holding ca.crt and ca.key",
            )
        certs = load_certificates(
            read_file(layout.ca_cert(), "CA certificate"), file=layout.ca_cert()
        )
        key = load_private_key(
            read_file(layout.ca_key(), "CA key"), file=layout.ca_key(), passphrase=passphrase
        )
        cert = certs[0]
        if not key_matches(key, cert.public_key()):
            raise PKIError(
                "ca.key does not match ca.crt",
                file=layout.ca_key(),
                hint="restore the key that belongs to this CA certificate",
            )
        check_is_ca(cert, file=layout.ca_cert())
        inventory = Inventory.at(folder, cert, db=db)
        if db is not None and is_postgresql_url(db):
            inventory.check()
        return cls(cert, key, chain=certs[1:], dir=folder, inventory=inventory)


def check_is_ca(cert: x509.Certificate, *, file: str | os.PathLike[str] | None = None) -> None:
    """Refuse a certificate that may not sign others.

    A v1 certificate (no extensions at all, as ``openssl req -x509`` without a
    config may write) is accepted as a CA, like OpenSSL does for trust anchors.
    """
    if cert.version == x509.Version.v1:
        return
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PKIError(
            "certificate is not a CA (basicConstraints CA:TRUE is missing)",
            file=file,
            hint="use a CA certificate, e.g. one made with mtlskit ca create",
        )
