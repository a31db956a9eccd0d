"""Helpers for the ACME tests (no tests here): `ca serve` with ACME, pebble, the clients.

pebble (Let's Encrypt's ACME test server, Debian's package) is the reference:
the same certbot and lego command lines run against it and against mtlskit.
It resolves names through pebble-challtestsrv's DNS, whose default answer for
any A query is 127.0.0.1, so `app.internal` reaches the client's standalone
server on loopback, as `--acme-resolve app.internal:127.0.0.1` does for mtlskit.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from bench.acme_client import AcmeClient, Http01Responder, make_csr
from cryptography.hazmat.primitives.asymmetric import ec

from mtlskit.database import open_database
from tests.support.processes import free_port, wait_for_port
from tests.support.service import Service, start_service

NAME = "app.internal"


@dataclass
class AcmeServer:
    """An ACME server under test: its directory, the root its TLS certificate chains
    to (what clients trust), the root of what it issues, and where it validates."""

    kind: str  # "mtlskit" | "pebble"
    directory: str
    tls_root: Path
    http_port: int
    tls_port: int
    workdir: Path
    service: Service | None = None
    mgmt_port: int | None = None  # pebble's management interface
    metrics_port: int | None = None

    def issuing_root(self) -> Path:
        """The root that certificates from this server chain to (pebble makes a new
        one at each start and shows it on its management interface)."""
        if self.kind == "mtlskit":
            return self.tls_root
        path = self.workdir / "pebble-root.pem"
        if not path.exists():
            ctx = ssl.create_default_context(cafile=str(self.tls_root))
            url = f"https://127.0.0.1:{self.mgmt_port}/roots/0"
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                path.write_bytes(r.read())
        return path

    def client(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.tls_root)))


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/setup.sh --test")


def start_mtlskit_acme(
    procs: list[subprocess.Popen[bytes]], ca_dir: Path, *args: str
) -> AcmeServer:
    """`mtlskit ca serve` with ACME for *.internal and 127.0.0.1, validating on free ports."""
    http_port, tls_port, port = free_port(), free_port(), free_port()
    service = start_service(
        procs,
        ca_dir,
        "--url",
        f"https://127.0.0.1:{port}",
        "--acme-allow",
        "DNS:*.internal",
        "--acme-allow",
        "IP:127.0.0.1",
        "--acme-http-port",
        str(http_port),
        "--acme-tls-port",
        str(tls_port),
        "--acme-resolve",
        f"{NAME}:127.0.0.1",
        *args,
        port=port,
    )
    return AcmeServer(
        "mtlskit",
        f"https://127.0.0.1:{port}/acme/directory",
        ca_dir / "ca.crt",
        http_port,
        tls_port,
        ca_dir.parent,
        service,
    )


def start_replica(
    server: AcmeServer, procs: list[subprocess.Popen[bytes]], *args: str
) -> tuple[Service, httpx.BaseTransport]:
    """A second `ca serve` for the same CA and database, behind the same public URL,
    and a transport that sends every request to it (as a load balancer may)."""
    assert server.service is not None
    base = server.directory.removesuffix("/acme/directory")
    replica = start_service(
        procs,
        server.service.ca_dir,
        "--url",
        base,  # one public URL for both, as behind a load balancer
        "--acme-allow",
        "DNS:*.internal",
        "--acme-http-port",
        str(server.http_port),
        "--acme-tls-port",
        str(server.tls_port),
        "--acme-resolve",
        f"{NAME}:127.0.0.1",
        "--rate-limit",
        "10000",
        *args,
    )

    class ViaReplica(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport(
                verify=ssl.create_default_context(cafile=str(server.tls_root))
            )

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            request.url = request.url.copy_with(port=replica.port)
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    return replica, ViaReplica()


def check_replicas_share_state(
    server: AcmeServer, http: httpx.Client, via: httpx.Client, http01: Http01Responder
) -> None:
    """A nonce from one replica is good on the other (once); an order made on one is
    validated by the other, finalized there, and downloaded from the first."""
    client = AcmeClient(server.directory, http)
    client.new_account()
    nonce = http.head(client.directory["newNonce"]).headers["Replay-Nonce"]
    twin = AcmeClient(server.directory, via, key=client.key, kid=client.kid)
    first = twin.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": NAME}]}, nonce=nonce
    )
    assert first.status_code == 201
    replay = twin.post(client.kid, None, nonce=nonce, check=False)  # type: ignore[arg-type]
    assert problem_type(replay) == "badNonce"
    order_url = first.headers["Location"]
    order = first.json()
    authz = client.get(order["authorizations"][0])  # on the first replica
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    http01.add(NAME, chall["token"], client.key_authorization(chall["token"]))
    twin.post(chall["url"], {})  # validated by the replica
    client.poll(order_url, until=("ready",))
    key = ec.generate_private_key(ec.SECP256R1())
    csr = base64.urlsafe_b64encode(make_csr(key, [NAME])).rstrip(b"=").decode()
    done = twin.post(order["finalize"], {"csr": csr})
    assert done.json()["status"] == "valid"
    chain = client.post(client.get(order_url)["certificate"], None).text
    assert chain.startswith("-----BEGIN CERTIFICATE-----")


def start_pebble(procs: list[subprocess.Popen[bytes]], tls_dir: Path, workdir: Path) -> AcmeServer:
    """pebble on free loopback ports (its defaults are 0.0.0.0:14000/15000, http-01 on
    5002, tls-alpn-01 on 5001) with challtestsrv as its DNS; nothing sleeps, no
    good nonce is refused on purpose."""
    need("pebble", "pebble-challtestsrv")
    port, mgmt, http_port, tls_port = free_port(), free_port(), free_port(), free_port()
    dns, dns_mgmt = free_port(), free_port()
    config = workdir / "pebble-config.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{mgmt}",
                    "certificate": str(tls_dir / "server.crt"),
                    "privateKey": str(tls_dir / "server.key"),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    log_path = workdir / "pebble.log"
    with log_path.open("ab") as log:
        chall = subprocess.Popen(
            [
                "pebble-challtestsrv",
                "-dns01",
                f"127.0.0.1:{dns}",
                "-management",
                f"127.0.0.1:{dns_mgmt}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.append(chall)
    wait_for_port(dns, chall)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    with log_path.open("ab") as log:
        pebble = subprocess.Popen(
            ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    procs.append(pebble)
    wait_for_port(port, pebble)
    wait_for_port(mgmt, pebble)
    return AcmeServer(
        "pebble",
        f"https://127.0.0.1:{port}/dir",
        tls_dir / "ca.crt",
        http_port,
        tls_port,
        workdir,
        mgmt_port=mgmt,
    )


def issued_count(ca_dir: Path) -> int:
    """Certificates in the CA's inventory (what was handed out, or about to be)."""
    db = open_database(ca_dir / "ca.db")
    try:
        with db.transaction() as tx:
            row = tx.one("SELECT COUNT(*) AS n FROM certs")
        return int(row["n"]) if row else 0
    finally:
        db.close()


def cert_status(ca_dir: Path, serial: str) -> str:
    db = open_database(ca_dir / "ca.db")
    try:
        with db.transaction() as tx:
            row = tx.one("SELECT status FROM certs WHERE serial = ?", (serial,))
        return str(row["status"]) if row else "missing"
    finally:
        db.close()


@pytest.fixture(scope="module")
def module_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes shared by a module's tests (one server for many tests), stopped at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def problem_type(response: httpx.Response) -> str:
    """The ACME error type of a problem document (``badNonce``), checking its shape."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    assert response.headers.get("Replay-Nonce"), "every ACME response carries a nonce"
    doc = response.json()
    assert doc["type"].startswith("urn:ietf:params:acme:error:"), doc
    assert doc["detail"] and "Traceback" not in response.text
    return str(doc["type"]).rsplit(":", 1)[1]
