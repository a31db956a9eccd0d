"""Operating the CA service: metrics on --metrics-port, the audit log, a database that
fails (503 with Retry-After, nothing half-written) and the recovery once it is back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtlskit.pki.inventory import Inventory
from mtlskit.pki.seed import init_seed
from tests.support.processes import free_port, run_cli
from tests.support.service import Service, error_of, start_service


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    init_seed(folder)
    return folder


def token(ca_dir: Path, name: str, *args: str) -> str:
    res = run_cli("ca", "token", name, "--ca-dir", ca_dir, *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return req.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_and_audit(ca_dir: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    mport = free_port()
    service = start_service(procs, ca_dir, "--metrics-port", str(mport))
    tok = token(ca_dir, "m1")
    assert service.post("/enroll", {"token": tok, "csr": csr()}).status == 201
    assert service.post("/enroll", {"token": tok, "csr": csr()}).status == 403
    assert service.post("/enroll", {"token": "nope", "csr": csr()}).status == 403
    assert service.get("/crl").status == 200
    m = metrics(mport)
    assert m['mtlskit_ca_issuances_total{route="enroll",outcome="issued"}'] == 1
    assert m['mtlskit_ca_issuances_total{route="enroll",outcome="refused"}'] == 2
    assert m['mtlskit_ca_issuances_total{route="service",outcome="issued"}'] == 1
    assert m["mtlskit_ca_db_errors_total"] == 0
    assert m['mtlskit_acme_validation_seconds_bucket{le="+Inf"}'] == 0
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert m["mtlskit_ca_certificate_expiry_timestamp_seconds"] == int(
        ca_cert.not_valid_after_utc.timestamp()
    )
    assert m["mtlskit_ca_crl_next_update_timestamp_seconds"] > 0
    assert m['mtlskit_handshakes_total{outcome="ok",reason=""}'] >= 4  # the server's own
    # one audit line per issuance: who, serial, names, route
    audit = [line for line in service.log().splitlines() if " issue route=enroll " in line]
    assert len(audit) == 1
    assert (
        'subject="CN=m1"' in audit[0] and "by=token:" in audit[0] and "addr=127.0.0.1" in audit[0]
    )
    serial = audit[0].split("serial=")[1].split()[0]
    assert Inventory.open(ca_dir, ca_cert).get(serial).subject == "CN=m1"


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Files made immutable (chattr +i: refused even to root) and released afterwards."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("making a file unwritable for the service needs root and chattr")
    held: list[Path] = []
    yield held
    for path in held:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_sqlite_unwritable_gives_503_then_recovers(
    ca_dir: Path, procs: list[subprocess.Popen[bytes]], immutable: list[Path]
) -> None:
    mport = free_port()
    service: Service = start_service(procs, ca_dir, "--metrics-port", str(mport))
    tok = token(ca_dir, "later")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    count = Inventory.open(ca_dir, ca_cert).count()
    files = [p for p in (ca_dir / "ca.db", ca_dir / "ca.db-wal") if p.exists()]
    try:
        _chattr("+i", *files)
    except subprocess.CalledProcessError:
        pytest.skip("this filesystem has no immutable flag")
    immutable.extend(files)
    resp = service.post("/enroll", {"token": tok, "csr": csr()})
    assert resp.status == 503, resp.body
    assert resp.header("retry-after").isdigit()
    assert "database is unavailable; nothing was issued" in error_of(resp)
    assert metrics(mport)["mtlskit_ca_db_errors_total"] >= 1
    _chattr("-i", *files)
    immutable.clear()
    # back: the same token works (it was never spent), exactly one certificate more
    resp = service.post("/enroll", {"token": tok, "csr": csr()})
    assert resp.status == 201, resp.body
    assert Inventory.open(ca_dir, ca_cert).count() == count + 1
    assert "Traceback" not in service.log()


POSTGRES_SH = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of this test alone (it is stopped and started again)."""
    import tempfile

    if not POSTGRES_SH.exists():
        pytest.skip("scripts/postgres.sh (the throwaway PostgreSQL) is not in this tree")
    folder = Path(tempfile.mkdtemp(prefix="mtlskit-svc-pg-"))
    r = subprocess.run(
        ["bash", str(POSTGRES_SH), "start", str(folder)], capture_output=True, text=True
    )
    if r.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL ({r.stderr.strip()}): run scripts/setup.sh --test")
    try:
        yield r.stdout.strip(), folder
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_down_gives_503_then_recovers(
    ca_dir: Path, procs: list[subprocess.Popen[bytes]], own_postgres: tuple[str, Path]
) -> None:
    import time

    url, folder = own_postgres
    service = start_service(procs, ca_dir, "--db", url)
    first = token(ca_dir, "pg1", "--db", url)
    assert service.post("/enroll", {"token": first, "csr": csr()}).status == 201
    later = token(ca_dir, "pg2", "--db", url)

    subprocess.run(["bash", str(POSTGRES_SH), "stop", str(folder)], check=True, capture_output=True)
    health = service.get("/healthz")
    assert health.status == 503 and health.header("retry-after").isdigit()
    resp = service.post("/enroll", {"token": later, "csr": csr()})
    assert resp.status == 503 and "nothing was issued" in error_of(resp)

    subprocess.run(
        ["bash", str(POSTGRES_SH), "start", str(folder)], check=True, capture_output=True
    )
    deadline = time.monotonic() + 30
    while service.get("/healthz").status != 200:  # polling the service's recovery
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.1)
    resp = service.post("/enroll", {"token": later, "csr": csr()})
    assert resp.status == 201, resp.body  # the token was never spent
    res = run_cli("list", "--ca-dir", ca_dir, "--db", url, "--json")
    assert res.returncode == 0, res.stderr
    subjects = [r["subject"] for r in json.loads(res.stdout)]
    assert subjects.count("CN=pg1") == 1 and subjects.count("CN=pg2") == 1
    assert "Traceback" not in service.log()
