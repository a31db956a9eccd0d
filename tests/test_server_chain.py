"""What certificate chain `mtlskit serve` sends, on both TLS engines.

The default engine turns OpenSSL's per-handshake auto-chain off (it re-verified the
server's own chain in every handshake) and instead sends the certificate file's
chain, or, when the file holds only the leaf, the intermediates found in ca.crt once
at load time. A client that trusts only the root must still get through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mtlskit.pki.ca import CA, cert_pem
from mtlskit.tls import client_context
from tests.support.server import https, start_serve, write_files

ENGINES = ["openssl", "stdlib"]


def _env(engine: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MTLSKIT_TLS_ENGINE", None)
    if engine == "stdlib":
        env["MTLSKIT_TLS_ENGINE"] = "stdlib"
    return env


def _intermediate_pki(folder: Path, *, leaf_only: bool) -> Path:
    root = CA.create("/CN=Chain Root", key_type="p256", days=30)
    inter = CA.create("/CN=Chain Intermediate", key_type="p256", days=30, parent=root)
    server = inter.issue("server", "/CN=localhost", sans=["DNS:localhost"], key_type="p256")
    client = inter.issue("client", "/CN=client", key_type="p256")
    write_files(
        folder,
        {
            # The server's trust bundle holds the intermediate and the root.
            "ca.crt": inter.cert_pem + root.cert_pem,
            "root.crt": root.cert_pem,
            "server.crt": cert_pem(server.certificate) if leaf_only else server.cert_pem,
            "server.key": server.key_pem(),
            "client.crt": client.cert_pem,
            "client.key": client.key_pem(),
        },
    )
    return folder


def _sent_chain(port: int, certs: Path) -> int:
    """How many certificates the server sends (openssl s_client -showcerts)."""
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "localhost",
            "-showcerts",
            "-cert",
            str(certs / "client.crt"),
            "-key",
            str(certs / "client.key"),
            "-CAfile",
            str(certs / "root.crt") if (certs / "root.crt").exists() else str(certs / "ca.crt"),
        ],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    return r.stdout.count(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.interop
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("leaf_only", [True, False], ids=["leaf-file", "chain-file"])
def test_intermediate_sent_to_a_client_trusting_only_the_root(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], engine: str, leaf_only: bool
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = _intermediate_pki(tmp_path / "certs", leaf_only=leaf_only)
    served = start_serve(procs, certs, tmp_path, "--quiet", env=_env(engine))
    trust_root_only = client_context(certs / "root.crt", certs / "client.crt", certs / "client.key")
    status, _, body = https(served.port, trust_root_only)
    assert (status, body) == (200, b"hello world \n")
    # Leaf + intermediate. The stdlib engine keeps OpenSSL's auto-chain, which adds the root.
    assert _sent_chain(served.port, certs) == (3 if engine == "stdlib" and leaf_only else 2)


@pytest.mark.interop
def test_root_signed_leaf_is_sent_alone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], seed_certs_p256: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    served = start_serve(procs, seed_certs_p256, tmp_path, "--quiet", env=_env("openssl"))
    assert _sent_chain(served.port, seed_certs_p256) == 1
