"""Verify a certificate against trusted CAs and explain a failure in plain words.

Two paths, and the result says which one decided:

1. **cryptography's** ``x509.verification`` (the Rust WebPKI verifier) for X.509 v3
   chains, with two relaxations that match OpenSSL's ``openssl verify``:
   keyUsage and extendedKeyUsage are checked when present instead of required,
   and a client certificate may do without a subjectAltName (the seed's client
   is identified by its CN).
2. **mtlskit's chain check** when the chain holds an X.509 v1 certificate (the
   seed's ``openssl x509 -req`` writes a v1 client certificate, and
   ``openssl req -x509`` without a config a v1 CA), which cryptography refuses
   outright: issuer name match and signature (``verify_directly_issued_by``),
   validity, CA:TRUE (v1 issuers accepted, as OpenSSL does for trust anchors),
   path length, keyCertSign and extendedKeyUsage when present, host names
   against the SANs, unknown critical extensions refused.

The same chain check runs on every failure to turn it into reasons a person can
act on ("expired on 2025-01-01", "localhost is not among its SANs: …").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from mtlskit.errors import ConfigError, PKIError, VerificationError
from mtlskit.pki.crl import check_crl, is_revoked, read_crl
from mtlskit.pki.keys import PrivateKey, key_matches, load_private_key
from mtlskit.pki.load import load_certificates
from mtlskit.pki.names import authority_key_id, format_name, format_san, key_id, names_apart
from mtlskit.pki.store import read_file

__all__ = [
    "METHOD_ANCHOR",
    "METHOD_CRYPTOGRAPHY",
    "METHOD_FALLBACK",
    "PURPOSES",
    "Problem",
    "Purpose",
    "VerifyResult",
    "can_anchor_trust",
    "eku_names",
    "verify_certificate",
    "verify_files",
]

Purpose: TypeAlias = Literal["server", "client"]
PURPOSES: tuple[str, ...] = ("server", "client")

METHOD_CRYPTOGRAPHY = (
    "cryptography x509.verification (WebPKI rules; keyUsage/extendedKeyUsage checked "
    "when present, as OpenSSL does)"
)
METHOD_ANCHOR = "mtlskit trust check (the CA file holds the certificate itself)"
METHOD_FALLBACK = (
    "mtlskit chain check (the chain has an X.509 v1 certificate, which cryptography's "
    "verifier refuses): issuer name + signature, validity, CA flag, path length, "
    "extendedKeyUsage when present, SANs"
)

_EKU_FOR: dict[str, ObjectIdentifier] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}
_EKU_NAMES: dict[ObjectIdentifier, str] = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}
_MAX_DEPTH = 8
_SHA256 = SHA256()


@dataclass(frozen=True)
class Problem:
    """One reason a certificate does not verify, with the next step."""

    code: str  # expired, not-yet-valid, unknown-ca, bad-signature, not-ca, purpose, host, key, …
    message: str
    hint: str


@dataclass
class VerifyResult:
    """What :func:`verify_certificate` found. ``ok`` is true when ``problems`` is empty."""

    certificate: x509.Certificate
    method: str
    chain: list[x509.Certificate] = field(default_factory=list)  # leaf first, anchor last
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> list[str]:
        return [p.message for p in self.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`VerificationError` (reasons in plain words) unless valid."""
        if self.ok:
            return
        first = self.problems[0]
        what = "; ".join(self.reasons)
        # Messages usually name the file already ("certs/a.crt was not issued by …").
        file = None if self.file and self.file in what else self.file
        raise VerificationError(what, file=file, hint=first.hint, reasons=self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": self.ok,
            "method": self.method,
            "chain": [format_name(c.subject) for c in self.chain],
            "reasons": [
                {"code": p.code, "message": p.message, "hint": p.hint} for p in self.problems
            ],
            "notes": self.notes,
        }


# -- helpers ------------------------------------------------------------------------------


def _date(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _ekus(cert: x509.Certificate) -> list[ObjectIdentifier] | None:
    eku = _ext(cert, x509.ExtendedKeyUsage)
    return None if eku is None else list(eku)


def eku_names(oids: Sequence[ObjectIdentifier]) -> str:
    """``clientAuth, codeSigning``: extendedKeyUsage OIDs as OpenSSL names them."""
    return ", ".join(_EKU_NAMES.get(o, o.dotted_string) for o in oids) or "(empty)"


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    san = _ext(cert, x509.SubjectAlternativeName)
    return [] if san is None else list(san)


def _host_subject(host: str) -> xv.Subject:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return x509.DNSName(host.rstrip(".").encode("idna").decode("ascii").lower())
    except UnicodeError as exc:
        raise ConfigError(f"invalid host name {host!r}", hint="e.g. --host localhost") from exc


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        # RFC 6125 6.4.3: a wildcard stands for exactly one left-most label.
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def _host_matches(sans: Sequence[x509.GeneralName], subject: xv.Subject) -> bool:
    for name in sans:
        if isinstance(subject, x509.IPAddress) and isinstance(name, x509.IPAddress):
            if name.value == subject.value:
                return True
        elif (
            isinstance(subject, x509.DNSName)
            and isinstance(name, x509.DNSName)
            and _dns_matches(name.value, subject.value)
        ):
            return True
    return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def can_anchor_trust(cert: x509.Certificate) -> bool:
    """Whether OpenSSL takes ``cert`` as a trust anchor: a CA (CA:TRUE, or X.509 v1 as
    the seed's root), or a self-signed certificate (pinned)."""
    if cert.version == x509.Version.v1:
        return True
    bc = _basic_constraints(cert)
    return (bc is not None and bc.ca) or (cert.issuer == cert.subject and _issued_by(cert, cert))


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(_SHA256) == b.fingerprint(_SHA256)


# -- the chain check (fallback and diagnostics) -------------------------------------------


def _build_chain(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    problems: list[Problem],
    names: dict[str, str],
) -> list[x509.Certificate]:
    """Walk issuer links from ``leaf`` to a trust anchor; record why it stops short."""
    chain = [leaf]
    current = leaf
    while len(chain) <= _MAX_DEPTH:
        if any(_same(current, a) for a in anchors):
            return chain
        by_name = [
            c
            for c in [*anchors, *intermediates]
            if c.subject == current.issuer and not _same(c, current)
        ]
        issuer = next((c for c in by_name if _issued_by(current, c)), None)
        if issuer is None:
            who = (
                names["cert"]
                if current is leaf
                else f"the CA certificate {format_name(current.subject)}"
            )
            if by_name:
                named, ca = names_apart(
                    current.issuer,
                    authority_key_id(current),
                    by_name[0].subject,
                    key_id(by_name[0]),
                )
                problems.append(
                    Problem(
                        "bad-signature",
                        f"{who} names {named} as issuer, but its signature does not verify "
                        f"with the key of {ca} in {names['ca']}: another CA with the same name",
                        "use the CA that really signed it, or re-issue the certificate",
                    )
                )
            elif current.issuer == current.subject and _issued_by(current, current):
                problems.append(
                    Problem(
                        "unknown-ca",
                        f"{who} is self-signed ({format_name(current.subject)}) and not among "
                        f"the trusted CAs in {names['ca']}",
                        "add it to the CA file if you trust it",
                    )
                )
            else:
                trusted = "; ".join(format_name(a.subject) for a in anchors) or "(none)"
                problems.append(
                    Problem(
                        "unknown-ca",
                        f"{who} was not issued by a CA in {names['ca']} "
                        f"(issuer {format_name(current.issuer)}, CA is {trusted})",
                        "use the CA that signed it (or add its intermediate with --chain), "
                        "or re-issue it with mtlskit issue",
                    )
                )
            return chain
        chain.append(issuer)
        current = issuer
    problems.append(
        Problem("too-long", f"chain longer than {_MAX_DEPTH} certificates", "check the chain")
    )
    return chain


def _check_validity(
    chain: Sequence[x509.Certificate], at: dt.datetime, problems: list[Problem], cert_name: str
) -> None:
    for i, cert in enumerate(chain):
        who = cert_name if i == 0 else f"the CA certificate {format_name(cert.subject)}"
        hint = "renew it with mtlskit renew or mtlskit issue" if i == 0 else "renew the CA"
        if at > cert.not_valid_after_utc:
            problems.append(
                Problem("expired", f"{who} expired on {_date(cert.not_valid_after_utc)}", hint)
            )
        elif at < cert.not_valid_before_utc:
            problems.append(
                Problem(
                    "not-yet-valid",
                    f"{who} is not valid before {_date(cert.not_valid_before_utc)}",
                    "check the clock, or wait until then",
                )
            )


def _check_issuers(chain: Sequence[x509.Certificate], problems: list[Problem]) -> None:
    for i, issuer in enumerate(chain[1:], start=1):
        below = format_name(chain[i - 1].subject)
        if issuer.version != x509.Version.v1:
            bc = _basic_constraints(issuer)
            if bc is None or not bc.ca:
                problems.append(
                    Problem(
                        "not-ca",
                        f"{format_name(issuer.subject)} is not a CA (basicConstraints CA:TRUE "
                        f"is missing), so it cannot have issued {below}",
                        "issue certificates from a CA made with mtlskit ca create",
                    )
                )
                continue
            # path_length counts the CAs that may follow this one, leaf excluded.
            if bc.path_length is not None and i - 1 > bc.path_length:
                problems.append(
                    Problem(
                        "path-length",
                        f"{format_name(issuer.subject)} allows {bc.path_length} CA(s) below it, "
                        f"the chain has {i - 1}",
                        "create the intermediate from a CA with a larger --path-length",
                    )
                )
            ku = _ext(issuer, x509.KeyUsage)
            if ku is not None and not ku.key_cert_sign:
                problems.append(
                    Problem(
                        "not-ca",
                        f"{format_name(issuer.subject)} has keyUsage without keyCertSign",
                        "use a CA certificate made with mtlskit ca create",
                    )
                )


def _check_critical(chain: Sequence[x509.Certificate], problems: list[Problem]) -> None:
    for cert in chain:
        for ext in cert.extensions:
            if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
                problems.append(
                    Problem(
                        "critical-extension",
                        f"{format_name(cert.subject)} has an unknown critical extension "
                        f"{ext.oid.dotted_string}",
                        "re-issue it without that extension",
                    )
                )


def _check_leaf(
    leaf: x509.Certificate,
    *,
    purpose: Purpose | None,
    host: str | None,
    key: PrivateKey | None,
    problems: list[Problem],
    names: dict[str, str],
) -> None:
    ekus = _ekus(leaf)
    if purpose is not None and ekus is not None:
        want = _EKU_FOR[purpose]
        if want not in ekus and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in ekus:
            problems.append(
                Problem(
                    "purpose",
                    f"{names['cert']} is not allowed for {purpose} authentication: its "
                    f"extendedKeyUsage is {eku_names(ekus)}",
                    f"issue a {purpose} certificate (mtlskit issue {purpose} …, or "
                    "--profile server-client for both)",
                )
            )
    if host is not None:
        sans = _sans(leaf)
        if not _host_matches(sans, _host_subject(host)):
            listed = ", ".join(format_san(n) for n in sans) if sans else "none"
            problems.append(
                Problem(
                    "host",
                    f"{host} is not among the SANs of {names['cert']} (it has: {listed})",
                    f"connect with one of its names, or re-issue it with --san {host}",
                )
            )
    if key is not None and not key_matches(key, leaf.public_key()):
        problems.append(
            Problem(
                "key",
                f"the key in {names['key']} does not match certificate {names['cert']}",
                "use the key that was made with this certificate",
            )
        )


def _cryptography_verify(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    *,
    purpose: Purpose | None,
    host: str | None,
    at: dt.datetime,
) -> list[x509.Certificate]:
    """Run cryptography's verifier; raises ``xv.VerificationError``."""
    want = _EKU_FOR[purpose] if purpose is not None else None

    def eku_ok(_policy: xv.Policy, _cert: x509.Certificate, ekus: Any) -> None:
        if ekus is None or want is None:
            return
        if want not in list(ekus) and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in list(ekus):
            raise ValueError(f"extendedKeyUsage {eku_names(list(ekus))} lacks {_EKU_NAMES[want]}")

    def key_cert_sign(_policy: xv.Policy, _cert: x509.Certificate, ku: Any) -> None:
        if ku is not None and not ku.key_cert_sign:
            raise ValueError("CA keyUsage lacks keyCertSign")

    any_crit = xv.Criticality.AGNOSTIC
    ca_policy = xv.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.KeyUsage, any_crit, key_cert_sign
    )
    ee_policy = xv.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, any_crit, eku_ok
    )
    server = host is not None and purpose != "client"
    if not server:
        ee_policy = ee_policy.may_be_present(x509.SubjectAlternativeName, any_crit, None)
    builder = (
        xv.PolicyBuilder()
        .store(xv.Store(list(anchors)))
        .time(at)
        .max_chain_depth(_MAX_DEPTH)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    if server:
        assert host is not None
        return builder.build_server_verifier(_host_subject(host)).verify(leaf, list(intermediates))
    return builder.build_client_verifier().verify(leaf, list(intermediates)).chain


# -- the API ------------------------------------------------------------------------------


def verify_certificate(
    cert: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    *,
    intermediates: Sequence[x509.Certificate] = (),
    host: str | None = None,
    purpose: str | None = None,
    key: PrivateKey | None = None,
    at: dt.datetime | None = None,
    names: dict[str, str] | None = None,
) -> VerifyResult:
    """Verify ``cert`` up to one of ``trusted``; never raises for an invalid certificate.

    ``purpose`` ('server' or 'client') checks extendedKeyUsage when the certificate
    has one; ``host`` checks the SANs; ``key`` checks that the private key belongs
    to the certificate. ``names`` are labels for messages (``cert``, ``ca``, ``key``).
    """
    if purpose is not None and purpose not in PURPOSES:
        raise ConfigError(f"unknown purpose {purpose!r}", hint="use server or client")
    if not trusted:
        raise ConfigError("no trusted CA certificates given", hint="pass --ca FILE")
    when = at or dt.datetime.now(dt.UTC)
    labels = {"cert": "the certificate", "ca": "the CA file", "key": "the key file"}
    labels.update(names or {})
    purp: Purpose | None = purpose  # type: ignore[assignment]

    problems: list[Problem] = []
    if any(_same(cert, a) for a in trusted) and not can_anchor_trust(cert):
        # Trusted only because the CA file holds the certificate itself: cryptography's
        # verifier takes it as its own anchor, OpenSSL looks for its issuer and refuses.
        problems.append(
            Problem(
                "leaf-as-ca",
                f"{labels['cert']} is trusted only because {labels['ca']} holds it itself: it "
                "is neither a CA nor self-signed, so OpenSSL-based servers (mtlskit serve, "
                "nginx) refuse it",
                "pass the CA that issued it with --ca (its ca.crt)",
            )
        )
        return VerifyResult(cert, METHOD_ANCHOR, [cert], problems)
    if not any(can_anchor_trust(a) for a in trusted):
        leaves = "; ".join(format_name(a.subject) for a in trusted)
        problems.append(
            Problem(
                "ca-not-ca",
                f"{labels['ca']} holds no CA certificate ({leaves}: no basicConstraints CA:TRUE)",
                "pass the CA's certificate with --ca (ca.crt, not a server or client certificate)",
            )
        )
    chain = _build_chain(cert, trusted, intermediates, problems, labels)
    _check_validity(chain, when, problems, labels["cert"])
    _check_issuers(chain, problems)
    _check_critical(chain, problems)
    leaf_problems: list[Problem] = []
    _check_leaf(cert, purpose=purp, host=host, key=key, problems=leaf_problems, names=labels)
    key_problems = [p for p in leaf_problems if p.code == "key"]

    has_v1 = any(c.version == x509.Version.v1 for c in chain)
    if has_v1:
        result = VerifyResult(cert, METHOD_FALLBACK, chain, problems + leaf_problems)
        v1 = [format_name(c.subject) for c in chain if c.version == x509.Version.v1]
        result.notes.append(f"X.509 v1 (no extensions): {'; '.join(v1)}")
        if cert.version == x509.Version.v1 and purpose is not None:
            result.notes.append("no extendedKeyUsage: any purpose allowed, as in OpenSSL")
        return result

    try:
        verified = _cryptography_verify(
            cert, trusted, intermediates, purpose=purp, host=host, at=when
        )
    except xv.VerificationError as exc:
        found = problems + [p for p in leaf_problems if p.code != "key"]
        if not found:
            found = [
                Problem(
                    "rejected",
                    f"rejected by cryptography's verifier: {exc}",
                    "inspect the chain with mtlskit inspect",
                )
            ]
        return VerifyResult(cert, METHOD_CRYPTOGRAPHY, chain, found + key_problems)
    result = VerifyResult(cert, METHOD_CRYPTOGRAPHY, list(verified), key_problems)
    if _ekus(cert) is None and purpose is not None:
        result.notes.append("no extendedKeyUsage: any purpose allowed, as in OpenSSL")
    return result


def verify_files(
    cert_file: str | os.PathLike[str],
    ca_file: str | os.PathLike[str],
    *,
    chain_file: str | os.PathLike[str] | None = None,
    host: str | None = None,
    purpose: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    passphrase: bytes | None = None,
    at: dt.datetime | None = None,
    crl_file: str | os.PathLike[str] | None = None,
) -> VerifyResult:
    """:func:`verify_certificate` on files.

    ``cert_file`` may be a bundle (leaf first, then its intermediates, as servers
    send it); ``chain_file`` adds more intermediates; ``crl_file`` a CRL of the
    certificate's issuer, checked like OpenSSL's ``-crl_check`` (leaf only).
    """
    certs = load_certificates(read_file(cert_file, "certificate"), file=cert_file)
    trusted = load_certificates(read_file(ca_file, "CA certificate"), file=ca_file)
    intermediates = list(certs[1:])
    if chain_file is not None:
        intermediates += load_certificates(read_file(chain_file, "chain"), file=chain_file)
    key = None
    if key_file is not None:
        key = load_private_key(
            read_file(key_file, "private key"), file=key_file, passphrase=passphrase
        )
    result = verify_certificate(
        certs[0],
        trusted,
        intermediates=intermediates,
        host=host,
        purpose=purpose,
        key=key,
        at=at,
        names={
            "cert": os.fspath(cert_file),
            "ca": os.fspath(ca_file),
            "key": os.fspath(key_file) if key_file is not None else "the key file",
        },
    )
    result.file = os.fspath(Path(cert_file))
    if crl_file is not None:
        _check_revocation(result, crl_file, [*trusted, *intermediates], at=at)
    return result


def _check_revocation(
    result: VerifyResult,
    crl_file: str | os.PathLike[str],
    cas: Sequence[x509.Certificate],
    *,
    at: dt.datetime | None,
) -> None:
    """Add a problem when the CRL is unusable or lists the certificate."""
    crl = read_crl(crl_file)  # an unreadable CRL is a bad argument, not a verdict
    try:
        check_crl(crl, cas, file=crl_file, now=at)
    except PKIError as exc:
        # The message and its file; the hint once, as the problem's.
        where = f" ({exc.file})" if exc.file else ""
        result.problems.append(Problem("crl", exc.what + where, exc.hint or "make a fresh CRL"))
        return
    entry = is_revoked(result.certificate, crl)
    if entry is None:
        result.notes.append(f"not revoked according to {os.fspath(crl_file)}")
        return
    reason = ""
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        reason = f" (reason: {flag.value})"
    except x509.ExtensionNotFound:
        pass
    when = _date(entry.revocation_date_utc)
    result.problems.append(
        Problem(
            "revoked",
            f"{result.file} was revoked on {when}{reason}, per {os.fspath(crl_file)}",
            "issue a new certificate: mtlskit issue client|server NAME",
        )
    )
