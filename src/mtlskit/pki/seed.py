"""The seed's whole PKI in one call: what ``mtlskit init`` writes.

Same names, subjects, SANs and lifetimes as the seed's openssl commands, but
with correct extensions (v3, SANs, serverAuth/clientAuth, keyUsage).
"""

from __future__ import annotations

import os
from pathlib import Path

from mtlskit.pki.ca import CA, SEED_CA_SUBJECT
from mtlskit.pki.inventory import check_inventory_free, create_inventory
from mtlskit.pki.keys import DEFAULT_KEY_TYPE
from mtlskit.pki.store import write_many

__all__ = ["SEED_CLIENT_SUBJECT", "SEED_SERVER_SANS", "SEED_SERVER_SUBJECT", "init_seed"]

SEED_SERVER_SUBJECT = "/C=TH/ST=RB/O=Dev/CN=localhost"
SEED_SERVER_SANS = ("DNS:localhost", "DNS:www.example.com", "IP:127.0.0.1")
SEED_CLIENT_SUBJECT = "/C=TH/ST=RB/O=Dev/CN=client"


def init_seed(
    folder: str | os.PathLike[str] = "certs",
    *,
    key_type: str = DEFAULT_KEY_TYPE,
    force: bool = False,
    passphrase: bytes | None = None,
) -> list[Path]:
    """Write ca.key ca.crt server.key server.csr server.crt client.key client.csr client.crt.

    Nothing is written when one of them exists and ``force`` is false.
    ``passphrase`` encrypts the CA key only (servers and clients read theirs unattended).
    """
    ca = CA.create(SEED_CA_SUBJECT, key_type=key_type, days=3650)
    server = ca.issue(
        "server", SEED_SERVER_SUBJECT, sans=SEED_SERVER_SANS, key_type=key_type, days=365
    )
    client = ca.issue("client", SEED_CLIENT_SUBJECT, key_type=key_type, days=365)
    files = [
        *ca.files(folder, passphrase),
        *server.files(folder, "server"),
        *client.files(folder, "client"),
    ]
    check_inventory_free(folder, ca.certificate, replace=force)
    paths = write_many(files, force=force)
    # Adopts server.crt and client.crt; what the CA signs from now on is recorded there.
    ca.inventory = create_inventory(folder, ca.certificate, replace=force)
    ca.dir = Path(folder)
    return paths
