"""PKI helpers for the tests: certificates with a chosen age."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509

from mtlskit.pki.ca import CA, cert_pem
from mtlskit.pki.keys import generate_key, private_key_pem
from mtlskit.pki.names import parse_name


def aged(
    ca: CA,
    folder: Path,
    name: str,
    *,
    lifetime_days: float,
    age_days: float,
    profile: str = "server",
    sans: tuple[str, ...] = ("localhost", "127.0.0.1"),
    key_type: str = "p256",
) -> x509.Certificate:
    """A certificate issued ``age_days`` ago by ``ca`` (through its public signing
    method, so recorded in its inventory), written as NAME.crt and NAME.key."""
    key = generate_key(key_type)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
    cert = ca.sign_public_key(
        key.public_key(),
        parse_name(f"/O=Dev/CN={name}"),
        profile=profile,
        sans=sans,
        not_before=start,
        not_after=start + dt.timedelta(days=lifetime_days),
    )
    (folder / f"{name}.crt").write_bytes(cert_pem(cert))
    (folder / f"{name}.key").write_bytes(private_key_pem(key))
    os.chmod(folder / f"{name}.key", 0o600)
    return cert
