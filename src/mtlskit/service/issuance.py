"""The ONE issuance path of the CA service: enrollment, renewal and ACME finalize all
sign through :func:`issue_from_csr`.

Only the CSR's key is taken from the requester, after its signature is checked:
the subject, the SANs and the lifetime come from the caller (what a token, a
current certificate or an ACME order allows), the extensions from the profile
(:mod:`mtlskit.pki.profiles`). A CSR that asks to be a CA (basicConstraints
CA:TRUE) is refused outright; any other extension it asks for is ignored.
Every outcome is counted in the metrics; every certificate handed out is in the
inventory before it leaves, and has one audit line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from mtlskit.database import Transaction
from mtlskit.errors import MtlsError, RefusedError, StorageError
from mtlskit.pki import profiles
from mtlskit.pki.ca import cert_pem
from mtlskit.pki.inventory import format_time, serial_hex
from mtlskit.pki.names import format_san, parse_sans
from mtlskit.service.state import ServiceState

__all__ = [
    "MIN_RSA_BITS",
    "CheckedCSR",
    "Issued",
    "check_csr",
    "counted",
    "issue_from_csr",
    "load_request_csr",
]

MIN_RSA_BITS = 2048


def load_request_csr(data: str | bytes) -> x509.CertificateSigningRequest:
    """A CSR sent by a client (PEM, or DER bytes); 400 for anything else."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    except ValueError:
        raise RefusedError(
            "malformed CSR: not a PEM or DER certificate signing request",
            hint="send the CSR that mtlskit csr create or openssl req -new writes",
        ) from None


@dataclass(frozen=True)
class CheckedCSR:
    """A CSR that :func:`check_csr` accepted: what :func:`issue_from_csr` takes, so the
    checks run once per request (a signature check is the costly part) and never not."""

    csr: x509.CertificateSigningRequest


def check_csr(csr: x509.CertificateSigningRequest) -> CheckedCSR:
    """Refuse a CSR with a bad signature, a weak or unknown key, or asking for CA:TRUE."""
    try:
        valid = csr.is_signature_valid
    except Exception:  # cryptography refuses some unusual algorithms here
        valid = False
    if not valid:
        raise RefusedError(
            "the CSR's signature does not match its key",
            hint="sign the CSR with the private key it carries",
        )
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise RefusedError(
                f"the CSR's RSA key has {key.key_size} bits, fewer than {MIN_RSA_BITS}",
                hint="use a P-256 key (the default) or RSA 2048+",
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise RefusedError(f"the CSR's curve {key.curve.name} is not supported")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise RefusedError(
            f"the CSR's key type {type(key).__name__} is not supported",
            hint="use an ECDSA (P-256), RSA (2048+) or Ed25519 key",
        )
    try:
        bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    except ValueError:  # an extension cryptography cannot parse
        raise RefusedError("malformed CSR: an extension cannot be parsed") from None
    if bc is not None and bc.ca:
        raise RefusedError(
            "the CSR asks for a CA certificate (basicConstraints CA:TRUE)",
            status=403,
            hint="this service issues leaf certificates only; leave the extension out",
        )
    return CheckedCSR(csr)


def requested_sans(csr: x509.CertificateSigningRequest) -> list[str]:
    """The SANs a CSR asks for, as ``DNS:…``/``IP:…`` strings."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except ValueError:
        raise RefusedError("malformed CSR: its SAN extension cannot be parsed") from None
    return [format_san(n) for n in ext.value]


def _outcome(exc: BaseException) -> str:
    return (
        "failed" if isinstance(exc, StorageError) or not isinstance(exc, MtlsError) else "refused"
    )


def _count_failure(state: ServiceState, route: str, exc: BaseException) -> None:
    """Count a refused or failed request once, however many of our blocks it leaves."""
    if getattr(exc, "_mtlskit_counted", False):
        return
    state.metrics.count_issuance(route, _outcome(exc))
    with contextlib.suppress(AttributeError):  # a built-in exception without __dict__
        exc._mtlskit_counted = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def counted(state: ServiceState, route: str) -> Iterator[None]:
    """Count a request refused (or failed) in the block, e.g. before or around
    :func:`issue_from_csr` (which counts its own failures)."""
    try:
        yield
    except BaseException as exc:
        _count_failure(state, route, exc)
        raise


@dataclass(frozen=True)
class Issued:
    """A certificate :func:`issue_from_csr` made (and recorded)."""

    certificate: x509.Certificate
    chain_pem: bytes  # the leaf, then this CA when it is an intermediate
    serial: str  # hex, as the inventory writes it


def issue_from_csr(
    state: ServiceState,
    checked: CheckedCSR,
    *,
    names: Sequence[str],
    profile: str,
    route: str,
    subject: x509.Name | None = None,
    lifetime: dt.timedelta | None = None,
    requester: str | None = None,
    address: str | None = None,
    renewed_from: str | None = None,
    tx: Transaction | None = None,
) -> Issued:
    """Sign the CSR's key for ``names`` (SANs) with ``profile``.

    ``subject`` defaults to CN=<first name>; ``lifetime`` to ``--lifetime`` (capped at
    the CA's end). ``route`` (enroll, renew, acme) and ``requester`` (token id, serial,
    account) go into the audit line and the metrics. Within ``tx`` when given: the
    certificate is recorded with the caller's other writes, and the audit line and the
    "issued" count follow that transaction's commit.
    """
    try:
        prof = profiles.check_profile(profile)
        sans = parse_sans(names)
        if subject is None:
            first = names[0].split(":", 1)[-1] if names else ""
            cn = [x509.NameAttribute(NameOID.COMMON_NAME, first)] if 0 < len(first) <= 64 else []
            subject = x509.Name(cn)
        now = state.now().replace(microsecond=0)
        cert = state.ca.sign_public_key(
            checked.csr.public_key(),  # type: ignore[arg-type]
            subject,
            profile=prof,
            sans=sans,
            not_after=now + (lifetime or state.config.lifetime),
            crl_url=state.config.crl_url,
            renewed_from=renewed_from,
            tx=tx,
        )
        serial = serial_hex(cert.serial_number)
    except BaseException as exc:
        _count_failure(state, route, exc)
        raise

    def issued() -> None:
        state.metrics.count_issuance(route, "issued")
        state.audit_event(
            "renew" if renewed_from is not None else "issue",
            route=route,
            serial=serial,
            subject=cert.subject.rfc4514_string(),
            sans=[format_san(n) for n in sans],
            profile=prof,
            not_after=format_time(cert.not_valid_after_utc),
            renewed_from=renewed_from,
            by=requester,
            addr=address,
        )

    if tx is None:
        issued()
    else:
        tx.on_commit(issued)
    chain = b"".join(cert_pem(c) for c in (cert, *state.ca.leaf_chain))
    return Issued(cert, chain, serial)
