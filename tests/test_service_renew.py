"""Renewal over mTLS (POST /renew) and the agent: --once exit codes, a CA that is down,
and agent + `mtlskit serve` rotating with no restart (a client sees the new serial)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtlskit.errors import HandshakeError
from mtlskit.pki.ca import CA
from mtlskit.pki.inventory import Inventory, serial_hex
from mtlskit.pki.seed import init_seed
from mtlskit.pki.store import CERT_MODE, KEY_MODE, write_many
from mtlskit.tls import client_context
from tests.support.processes import ROOT, free_port, run_cli, wait_for_port
from tests.support.service import Service, error_of, start_service


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    init_seed(folder)
    return folder


@pytest.fixture
def service(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> Service:
    return start_service(procs, ca_dir, "--rate-limit", "1000")


def issue_short(
    ca_dir: Path,
    out: Path,
    name: str,
    profile: str,
    *,
    left: dt.timedelta,
    sans: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A certificate of this CA (in its inventory) that is due: 2/3 of its life is over."""
    ca = CA.load(ca_dir)
    issued = ca.issue(
        profile, f"CN={name}", sans=list(sans), not_after=dt.datetime.now(dt.UTC) + left
    )
    cert, key = out / f"{name}.crt", out / f"{name}.key"
    write_many([(key, issued.key_pem(), KEY_MODE), (cert, issued.cert_pem, CERT_MODE)], force=True)
    (out / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())
    return cert, key


def new_csr(key: ec.EllipticCurvePrivateKey | None = None, sans: list[str] = ()) -> str:  # type: ignore[assignment]
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_renew_route(service: Service, ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "node"
    cert_path, key_path = issue_short(
        ca_dir, out, "web", "server", left=dt.timedelta(hours=1), sans=("web.internal",)
    )
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    mtls = client_context(ca_dir / "ca.crt", cert_path, key_path)

    # no client certificate: 401
    resp = service.post("/renew", {"csr": new_csr()})
    assert resp.status == 401 and "client certificate" in error_of(resp)
    # the same key: refused
    old_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    resp = service.post("/renew", {"csr": new_csr(old_key)}, mtls)  # type: ignore[arg-type]
    assert resp.status == 403 and "new key" in error_of(resp)
    # names beyond the current certificate: refused
    resp = service.post("/renew", {"csr": new_csr(sans=["other.internal"])}, mtls)
    assert resp.status == 403 and "other.internal" in error_of(resp)

    # a server-only certificate (no clientAuth) renews over mTLS: same identity, new key
    resp = service.post("/renew", {"csr": new_csr()}, mtls)
    assert resp.status == 201, resp.body
    body = json.loads(resp.body)
    new = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert new.subject == old.subject and new.serial_number != old.serial_number
    assert (
        new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        == old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert (
        new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        == old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    life = new.not_valid_after_utc - new.not_valid_before_utc
    assert dt.timedelta(hours=23) < life <= dt.timedelta(hours=24, minutes=2)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    record = Inventory.open(ca_dir, ca_cert).get(body["serial"])
    assert record.renewed_from == serial_hex(old.serial_number)
    assert "renew route=renew" in service.wait_log("renew route=renew")

    # revoked: refused (the inventory decides, not only the handshake)
    res = run_cli("revoke", cert_path, "--ca-dir", ca_dir)
    assert res.returncode == 0, res.stderr
    resp = service.post("/renew", {"csr": new_csr()}, mtls)
    assert resp.status == 403 and "revoked" in error_of(resp)

    # a certificate of another CA: the handshake refuses it
    other = tmp_path / "other"
    init_seed(other)
    foreign = client_context(ca_dir / "ca.crt", other / "client.crt", other / "client.key")
    with pytest.raises(HandshakeError):
        service.post("/renew", {"csr": new_csr()}, foreign)
    assert "Traceback" not in service.log()


def agent_cli(*args: str | Path, timeout: float = 60) -> tuple[int, str]:
    res = run_cli("agent", *args, timeout=timeout)
    return res.returncode, res.stderr


def test_agent_once_exit_codes(service: Service, ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "node"
    cert_path, key_path = issue_short(
        ca_dir, out, "client", "client", left=dt.timedelta(seconds=20)
    )
    old_cert, old_key = cert_path.read_bytes(), key_path.read_bytes()
    hook = tmp_path / "hook.out"
    code, log = agent_cli(
        "--ca-url",
        service.url,
        "--cert",
        cert_path,
        "--key",
        key_path,
        "--once",
        "--exec",
        f"echo renewed >> {hook}",
    )
    assert code == 0, log
    assert "renewing CN=client" in log and "renewed CN=client" in log and "running: echo" in log
    assert hook.read_text() == "renewed\n"
    assert cert_path.read_bytes() != old_cert and key_path.read_bytes() != old_key
    assert key_path.stat().st_mode & 0o777 == 0o600
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(hours=23)
    # the pair works: a renewal with it succeeds the handshake (and is not due)
    code, log = agent_cli("--ca-url", service.url, "--cert", cert_path, "--key", key_path, "--once")
    assert code == 3 and "is not due" in log
    # errors: 1
    code, log = agent_cli(
        "--ca-url", service.url, "--cert", tmp_path / "none.crt", "--key", key_path, "--once"
    )
    assert code == 1 and "not found" in log


def test_agent_backs_off_when_ca_is_down(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "node"
    cert_path, key_path = issue_short(
        ca_dir, out, "client", "client", left=dt.timedelta(seconds=20)
    )
    before = cert_path.read_bytes(), key_path.read_bytes()
    down = f"https://localhost:{free_port()}"
    t0 = time.monotonic()
    code, log = agent_cli(
        "--ca-url",
        down,
        "--cert",
        cert_path,
        "--key",
        key_path,
        "--once",
        "--retries",
        "2",
        "--backoff",
        "0.2",
    )
    assert code == 1, log
    assert log.count("connection refused by localhost") == 3
    waits = [
        float(line.rsplit("retrying in ", 1)[1].rstrip("s"))
        for line in log.splitlines()
        if "retrying in" in line
    ]
    assert len(waits) == 2 and 0.2 <= waits[0] < 0.25 and 0.4 <= waits[1] < 0.45
    assert time.monotonic() - t0 >= 0.6
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before  # nothing replaced


def _serial_seen(port: int, certs: Path) -> int:
    ctx = client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
        return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.slow
def test_agent_and_serve_rotate_without_restart(
    ca_dir: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    # a 1-minute lifetime: the agent renews the server certificate ~20 s after issuance
    service = start_service(procs, ca_dir, "--lifetime", "1m", "--rate-limit", "1000")
    node = tmp_path / "node"
    fp = service.fingerprint()
    for args in (
        ["client", "--profile", "client"],
        ["web", "--profile", "server", "--san", "localhost"],
    ):
        tok = run_cli("ca", "token", *args, "--ca-dir", ca_dir).stdout.strip()
        res = run_cli("enroll", service.url, "--token", tok, "--dir", node, "--fingerprint", fp)
        assert res.returncode == 0, res.stderr
    port = free_port()
    serve_log = tmp_path / "serve.log"
    with serve_log.open("wb") as fh:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtlskit",
                "serve",
                "--certs",
                str(node),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    procs.append(serve)
    wait_for_port(port, serve)
    first = _serial_seen(port, node)
    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as fh:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtlskit",
                "agent",
                "--ca-url",
                service.url,
                "--cert",
                str(node / "server.crt"),
                "--key",
                str(node / "server.key"),
                "--signal",
                str(serve.pid),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    procs.append(agent)
    deadline = time.monotonic() + 60
    seen = first
    while seen == first and time.monotonic() < deadline:
        time.sleep(0.5)  # polling the server for the rotated certificate
        seen = _serial_seen(port, node)
    assert seen != first, agent_log.read_text()
    assert serve.poll() is None  # the same server process, never restarted
    on_disk = x509.load_pem_x509_certificate((node / "server.crt").read_bytes())
    assert seen == on_disk.serial_number
    agent.terminate()
    assert agent.wait(10) == 0
    text = agent_log.read_text()
    assert "renews at" in text and "renewed CN=web" in text and "sent SIGHUP" in text
    assert "reloaded certificates" in serve_log.read_text()
    assert "Traceback" not in text + service.log()
