"""Real ACME clients against `mtlskit ca serve`, and against pebble as the reference.

certbot (--standalone, http-01) and lego (http-01, then tls-alpn-01 on renewal)
each obtain, renew and revoke a certificate; the renewed certificate then serves
`mtlskit serve` and `mtlskit get` accepts it. The command lines are the README's
(ports filled in); pebble's 5-year certificates need a forced renewal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.pki.seed import init_seed
from tests.support.acme import (
    NAME,
    AcmeServer,
    cert_status,
    issued_count,
    need,
    start_mtlskit_acme,
    start_pebble,
)
from tests.support.processes import free_port, run_cli, wait_for_port

pytestmark = [pytest.mark.interop, pytest.mark.slow]

EMAIL = "ops@example.internal"


@pytest.fixture(params=["mtlskit", "pebble"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> AcmeServer:
    ca_dir = tmp_path / "ca"
    init_seed(ca_dir)
    if request.param == "mtlskit":
        return start_mtlskit_acme(procs, ca_dir)
    return start_pebble(procs, ca_dir, tmp_path)


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{cmd[0]} {cmd[-1]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def serial_of(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return format(cert.serial_number, "x")


def serve_and_get(
    cert: Path, key: Path, server: AcmeServer, seed: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The ACME certificate as `mtlskit serve`'s certificate; `mtlskit get` checks it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mtlskit",
            "serve",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--ca",
            str(seed / "ca.crt"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(proc)
    wait_for_port(port, proc)
    res = run_cli(
        "get",
        f"https://{NAME}:{port}/",
        "--resolve",
        f"{NAME}:{port}:127.0.0.1",
        "--cacert",
        server.issuing_root(),
        "--cert",
        seed / "client.crt",
        "--key",
        seed / "client.key",
    )
    assert res.returncode == 0, res.stderr
    assert "hello" in res.stdout.lower()
    proc.terminate()
    proc.wait(timeout=10)


def check_revoked(server: AcmeServer, serial: str) -> None:
    if server.service is None:
        return  # pebble: the client's success is what it says
    assert cert_status(server.service.ca_dir, serial) == "revoked"
    with server.client() as http:
        der = http.get(server.directory.replace("/acme/directory", "/crl")).content
    crl = x509.load_der_x509_crl(der)
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


def test_certbot_obtain_renew_revoke(
    server: AcmeServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    need("certbot")
    seed = tmp_path / "seed"
    init_seed(seed)
    env = {"REQUESTS_CA_BUNDLE": str(server.tls_root)}
    common = [
        "--non-interactive",
        "--server",
        server.directory,
        "--config-dir",
        "certbot",
        "--work-dir",
        "certbot",
        "--logs-dir",
        "certbot",
    ]
    port = ["--http-01-address", "127.0.0.1", "--http-01-port", str(server.http_port)]
    before = issued_count(server.service.ca_dir) if server.service else 0
    account = ["--agree-tos", "-m", EMAIL, "--no-eff-email"]
    run(
        ["certbot", "certonly", "--standalone", *common, *port, *account, "-d", NAME], env, tmp_path
    )
    live = tmp_path / "certbot" / "live" / NAME
    first = serial_of(live / "cert.pem")
    renew = ["certbot", "renew", *common, *port, "--no-random-sleep-on-renew"]
    if server.kind == "pebble":
        renew.append("--force-renewal")  # pebble's certificates last 5 years
    run(renew, env, tmp_path)
    second = serial_of(live / "cert.pem")
    assert second != first
    if server.service is not None:
        assert issued_count(server.service.ca_dir) == before + 2
        assert cert_status(server.service.ca_dir, second) == "valid"
    serve_and_get(live / "fullchain.pem", live / "privkey.pem", server, seed, procs)
    run(
        ["certbot", "revoke", *common, "--cert-name", NAME, "--no-delete-after-revoke"],
        env,
        tmp_path,
    )
    check_revoked(server, second)


def test_lego_obtain_renew_revoke(
    server: AcmeServer, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    need("lego")
    seed = tmp_path / "seed"
    init_seed(seed)
    env = {"LEGO_CA_CERTIFICATES": str(server.tls_root)}
    common = [
        "lego",
        "--server",
        server.directory,
        "--accept-tos",
        "--email",
        EMAIL,
        "--path",
        "lego",
        "--domains",
        NAME,
    ]
    http01 = ["--http", "--http.port", f"127.0.0.1:{server.http_port}"]
    tls_alpn01 = ["--tls", "--tls.port", f"127.0.0.1:{server.tls_port}"]
    run([*common, *http01, "run"], env, tmp_path)
    certs = tmp_path / "lego" / "certificates"
    first = serial_of(certs / f"{NAME}.crt")
    renew = [*common, *tls_alpn01, "renew", "--no-random-sleep"]
    if server.kind == "pebble":
        renew += ["--days", "9999"]  # pebble's certificates last 5 years
    run(renew, env, tmp_path)
    second = serial_of(certs / f"{NAME}.crt")
    assert second != first
    serve_and_get(certs / f"{NAME}.crt", certs / f"{NAME}.key", server, seed, procs)
    run([*common, "revoke"], env, tmp_path)
    check_revoked(server, second)
