"""Expiry you can see: the certificates and CRLs of a folder with the days they have left.

::

    rows = folder_status("certs", warn=parse_duration("30d"))
    needs_attention(rows)      # True when something expires within 30 days (or did)

A CRL counts like a certificate: once its nextUpdate has passed, OpenSSL refuses
every client certificate, so an old CRL is as urgent as an expiring CA. CRLs
are re-made often, so one warns when a third of its own lifetime is left (or
``warn``, when that is sooner). Given the CA's inventory, a certificate revoked
there but in no CRL yet shows as revoked too, with a note to publish a CRL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from mtlskit.errors import ConfigError, PKIError
from mtlskit.pki.crl import check_crl, is_revoked, load_crl
from mtlskit.pki.inventory import Inventory, format_time, issued_by, profile_of, serial_hex
from mtlskit.pki.load import load_certificates
from mtlskit.pki.store import read_file

__all__ = ["StatusRow", "folder_status", "needs_attention", "parse_duration", "role_of"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# States that make `mtlskit status` exit 1.
ATTENTION = frozenset({"expiring", "expired", "bad"})


def parse_duration(text: str, *, flag: str = "duration") -> dt.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``, ``1h30m`` (s, m, h, d, w): the one parser
    of durations (``list --expiring``, ``status --warn``, ``ca serve --lifetime``, …).

    A number without a unit is refused: ``30`` could be days, hours or seconds, and a
    command must not guess (``--expiring 30`` once meant 30 days without saying so)."""
    value = text.strip().lower()
    pos, seconds = 0, 0.0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if value and pos == len(value):
        return dt.timedelta(seconds=seconds)
    if _NUMBER.fullmatch(value):
        raise ConfigError(
            f"{flag} {text.strip()!r} has no unit",
            hint=f"write e.g. {value}d for days (units: s, m, h, d, w)",
        )
    raise ConfigError(
        f"{flag} {text!r} is not a duration", hint="write e.g. 90s, 10m, 24h, 30d or 2w"
    )


def role_of(cert: x509.Certificate) -> str:
    """``CA``, or the leaf profile (``server``, ``client``, ``server-client``)."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "CA"
    except x509.ExtensionNotFound:
        if cert.version == x509.Version.v1 and cert.issuer == cert.subject:
            return "CA"  # the seed's `openssl req -x509` root
    return profile_of(cert)


@dataclass(frozen=True)
class StatusRow:
    file: str
    kind: str  # CA, server, client, server-client, CRL, ?
    subject: str
    serial: str | None
    not_after: dt.datetime | None  # nextUpdate for a CRL
    days_left: float | None
    state: str  # ok, expiring, expired, revoked, bad
    note: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "kind": self.kind,
            "subject": self.subject,
            "serial": self.serial,
            "not_after": format_time(self.not_after) if self.not_after else None,
            "days_left": round(self.days_left, 2) if self.days_left is not None else None,
            "state": self.state,
            "note": self.note,
        }


def _state(days_left: float, warn: dt.timedelta) -> str:
    if days_left < 0:
        return "expired"
    if days_left * 86400 < warn.total_seconds():
        return "expiring"
    return "ok"


def _files(folder: Path) -> list[Path]:
    found = [p for ext in ("*.crt", "*.pem", "*.crl") for p in folder.glob(ext) if p.is_file()]
    return sorted(set(found))


def folder_status(
    folder: str | os.PathLike[str],
    *,
    warn: dt.timedelta,
    now: dt.datetime | None = None,
    inventory: Inventory | None = None,
) -> list[StatusRow]:
    """A row per certificate (each one of a bundle) and per CRL in ``folder``.

    With ``inventory`` (the CA's), revocations not yet in a CRL show too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PKIError(
            "folder not found", file=folder, hint="give the folder with your certificates"
        )
    now = now or dt.datetime.now(dt.UTC)
    certs: list[tuple[Path, x509.Certificate]] = []
    crls: list[tuple[Path, x509.CertificateRevocationList]] = []
    rows: list[StatusRow] = []
    for path in _files(folder):
        data = read_file(path)
        try:
            if path.suffix == ".crl" or b"-----BEGIN X509 CRL" in data:
                crls.append((path, load_crl(data, file=path)))
            elif b"PRIVATE KEY-----" in data or b"CERTIFICATE REQUEST-----" in data:
                continue  # a key or a CSR saved as .pem
            else:
                certs.extend((path, c) for c in load_certificates(data, file=path))
        except PKIError as exc:
            rows.append(StatusRow(path.name, "?", "", None, None, None, "bad", exc.what))
    cas = [c for _, c in certs if role_of(c) == "CA"]
    good_crls: list[x509.CertificateRevocationList] = []
    for path, crl in crls:
        days = (crl.next_update_utc - now).total_seconds() / 86400 if crl.next_update_utc else None
        number = None
        with contextlib.suppress(x509.ExtensionNotFound):
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        note = f"#{number}, {len(crl)} revoked" if number is not None else f"{len(crl)} revoked"
        # A CRL is re-made often: warn when a third of its own lifetime is left, if sooner.
        crl_warn = warn
        if crl.next_update_utc is not None:
            crl_warn = min(warn, (crl.next_update_utc - crl.last_update_utc) / 3)
        state = _state(days, crl_warn) if days is not None else "ok"
        try:
            check_crl(crl, cas, file=path, check_time=False)
            good_crls.append(crl)
        except PKIError as exc:
            state, note = "bad", exc.what
        rows.append(
            StatusRow(
                path.name,
                "CRL",
                crl.issuer.rfc4514_string(),
                None,
                crl.next_update_utc,
                days,
                state,
                note,
            )
        )
    pending = {r.serial: r for r in inventory.revoked()} if inventory is not None else {}
    for path, cert in certs:
        days = (cert.not_valid_after_utc - now).total_seconds() / 86400
        state, note = _state(days, warn), ""
        rec = pending.get(serial_hex(cert.serial_number))
        if rec is not None and inventory is not None and issued_by(cert, inventory.ca_cert):
            when = f"{rec.revoked_at:%Y-%m-%d}" if rec.revoked_at else "?"
            state, note = "revoked", f"revoked {when} in the inventory, in no CRL yet: mtlskit crl"
        for crl in good_crls:
            entry = is_revoked(cert, crl)
            if entry is not None:
                state, note = "revoked", f"revoked {entry.revocation_date_utc:%Y-%m-%d}"
        if cert.not_valid_before_utc > now:
            note = note or f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
        rows.append(
            StatusRow(
                path.name,
                role_of(cert),
                cert.subject.rfc4514_string(),
                serial_hex(cert.serial_number),
                cert.not_valid_after_utc,
                days,
                state,
                note,
            )
        )
    rows.sort(key=lambda r: (r.days_left if r.days_left is not None else -1e9, r.file))
    return rows


def needs_attention(rows: list[StatusRow]) -> bool:
    """True when a row expires within the warning window, has expired or is unreadable."""
    return any(r.state in ATTENTION for r in rows)
