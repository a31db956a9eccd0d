"""The CertificateRequest names the CAs of the --ca bundle, read back with openssl s_client.

Clients that hold several certificates (browsers, Java, curl with a keychain)
offer the one a listed CA issued; Go fills the list from ClientCAs and nginx
from ssl_client_certificate. ``--no-client-ca-names`` leaves it out (very large
bundles); the stdlib engine cannot fill it and says so at start-up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import make_pki, start_serve

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

NAMES = "Acceptable client certificate CA names"
NO_NAMES = "No client certificate CA names sent"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = make_pki(tmp_path_factory.mktemp("pki") / "certs")
    # A bundle of two CAs: both must be named.
    (certs / "bundle.crt").write_bytes(
        (certs / "ca.crt").read_bytes() + (certs / "other-ca.crt").read_bytes()
    )
    return certs


def ca_names(port: int, certs: Path, *args: str) -> list[str]:
    """The CA names ``openssl s_client`` reads in the server's CertificateRequest."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    r = subprocess.run(
        [*argv, "-CAfile", str(certs / "ca.crt"), *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = r.stdout.splitlines()
    if NO_NAMES in lines:
        return []
    assert NAMES in lines, r.stdout + r.stderr
    names = []  # one subject a line, then "Client Certificate Types" or "…Signature Algorithms"
    for line in lines[lines.index(NAMES) + 1 :]:
        if ":" in line:
            break
        names.append(line)
    return names


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_the_certificate_request_names_the_ca_bundle(
    procs: list[subprocess.Popen[bytes]], pki: Path, tmp_path: Path, version: str
) -> None:
    s = start_serve(procs, pki, tmp_path, "--ca", str(pki / "bundle.crt"))
    assert ca_names(s.port, pki, version) == ["CN = Test CA", "CN = Other CA"]
    assert s.stop() == 0
    assert "CA names" not in s.log()


def test_no_client_ca_names(
    procs: list[subprocess.Popen[bytes]], pki: Path, tmp_path: Path
) -> None:
    s = start_serve(procs, pki, tmp_path, "--ca", str(pki / "bundle.crt"), "--no-client-ca-names")
    assert ca_names(s.port, pki) == []
    assert s.stop() == 0


def test_the_stdlib_engine_says_it_sends_no_names(
    procs: list[subprocess.Popen[bytes]], pki: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "MTLSKIT_TLS_ENGINE": "stdlib"}
    s = start_serve(procs, pki, tmp_path, env=env)
    assert ca_names(s.port, pki) == []
    assert s.stop() == 0
    assert "the stdlib TLS engine sends no CA names in the CertificateRequest" in s.log()
    quiet = start_serve(procs, pki, tmp_path, "--no-client-ca-names", env=env)
    assert quiet.stop() == 0
    assert "CA names" not in quiet.log()
