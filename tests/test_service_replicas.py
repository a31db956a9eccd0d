"""Two `ca serve` replicas on one PostgreSQL serve one CA; one is killed mid-load.

Both replicas run on the same CA folder (the CA key is shared), each on its own
port, behind one public URL. Enrollments (tokens made beforehand) and complete
ACME orders are spread over both; then one replica gets SIGKILL while requests
are in flight, and every client goes on with the other one.

What the design guarantees, and what is checked here:

- A certificate is recorded in the inventory in the same transaction that spends
  its token or makes its ACME order valid, and before any answer leaves, so every
  certificate a client holds is in the inventory, and the inventory holds nothing
  that no client can get (a spent token names its certificate; a valid order
  serves it).
- When the answer was lost (the replica died after the commit), the same request
  on the other replica gets the same certificate: for enrollment, the token with
  a CSR for the same key; for ACME, the order, which is "valid".
- An ACME order is never left half-finalized (finalize is one transaction: the
  order is "ready" or "valid"), and a challenge the dead replica was validating is
  validated again by the other once the dead one has stopped beating.
- Serials are unique (the inventory's UNIQUE constraint, checked again here).
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from bench.acme_client import AcmeClient, Http01Responder, make_csr
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.json_util import encode_b64jose

from mtlskit.caclient import enroll_csr
from mtlskit.database import open_database
from mtlskit.pki.ca import create_csr, csr_pem
from mtlskit.pki.inventory import serial_hex
from mtlskit.pki.seed import init_seed
from mtlskit.service.tokens import create_token
from mtlskit.tls import client_context
from tests.support.acme import (
    NAME,
    AcmeServer,
    check_replicas_share_state,
    start_mtlskit_acme,
    start_replica,
)
from tests.support.service import Service

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ENROLLMENTS = 40
ORDERS = 12
WORKERS = 3  # of each kind
LOAD_SECONDS = 90  # the bound: the load normally ends in well under half of it


@dataclass
class Replica:
    name: str
    url: str  # for enrollment
    http: httpx.Client  # for ACME (the replica's port, the shared public URL)
    service: Service


@dataclass
class Load:
    """What the clients received, and how often a request died with the replica."""

    replicas: list[Replica]
    killed: threading.Event = field(default_factory=threading.Event)
    victim: int = 1
    enrolled: dict[str, str] = field(default_factory=dict)  # token id -> serial
    certs: dict[str, str] = field(default_factory=dict)  # serial -> leaf PEM
    orders: dict[str, str] = field(default_factory=dict)  # order URL -> serial
    done_on: list[int] = field(default_factory=lambda: [0, 0])
    interrupted: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, i: int) -> int:
        """Replica ``i % 2``, or the survivor once the other is dead."""
        index = i % 2
        return 1 - self.victim if self.killed.is_set() and index == self.victim else index

    def attempt(self, i: int, work: Callable[[Replica], Any]) -> Any:
        """``work`` on replica ``pick(i)``; when that replica is the one killed, the same
        work again on the other (the clients' only recovery: ask the other replica)."""
        index = self.pick(i)
        try:
            result = work(self.replicas[index])
        except Exception:
            if not (index == self.victim and self.killed.is_set()):
                raise
            with self.lock:
                self.interrupted += 1
            index = 1 - self.victim
            result = work(self.replicas[index])
        with self.lock:
            self.done_on[index] += 1
        return result

    def record(self, serial: str, chain_pem: str) -> None:
        leaf = x509.load_pem_x509_certificate(chain_pem.encode())
        assert serial_hex(leaf.serial_number) == serial
        with self.lock:
            assert serial not in self.certs, f"serial {serial} handed out twice"
            self.certs[serial] = chain_pem.split("-----END CERTIFICATE-----")[0]


def finish_order(client: AcmeClient, order_url: str, responder: Http01Responder, key: Any) -> str:
    """Take an order from wherever it is to its certificate: validate what is pending,
    wait for what is processing, finalize when ready, download when valid. Resumable,
    so an order begun on the dead replica is finished on the other."""
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        order = client.get(order_url)
        status = order["status"]
        if status == "valid":
            return client.post(order["certificate"], None).text
        if status == "ready":
            csr = encode_b64jose(make_csr(key, [NAME]))
            client.post(order["finalize"], {"csr": csr})
            continue
        assert status == "pending", order
        for authz_url in order["authorizations"]:
            authz = client.get(authz_url)
            chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
            if authz["status"] == "valid":
                continue
            if chall["status"] == "pending":
                token = chall["token"]
                responder.add(NAME, token, client.key_authorization(token))
                if client.post(chall["url"], {}).json()["status"] == "valid":
                    continue
            client.poll(authz_url, until=("valid",), timeout=40)
    raise AssertionError(f"order {order_url} did not finish")


def run_load(
    load: Load, server: AcmeServer, postgres_url: str, ca_dir: Path, responder: Http01Responder
) -> None:
    db = open_database(postgres_url)
    try:
        made = [create_token(db, f"node{i}") for i in range(ENROLLMENTS)]
    finally:
        db.close()
    todo = list(enumerate(made))
    context = client_context(ca_dir / "ca.crt")

    def enroller() -> None:
        while True:
            with load.lock:
                if not todo:
                    return
                i, (token, record) = todo.pop()
            key = ec.generate_private_key(ec.SECP256R1())
            pem = csr_pem(create_csr(key, x509.Name([]), [])).decode()

            def enroll(replica: Replica, token: str = token, pem: str = pem) -> Any:
                return enroll_csr(replica.url, token, pem.encode(), context)

            issued = load.attempt(i, enroll)
            load.record(issued.serial, issued.chain_pem.decode())
            with load.lock:
                load.enrolled[record.id] = issued.serial

    orders_left = [ORDERS]

    def orderer(w: int) -> None:
        client = AcmeClient(server.directory, load.replicas[w % 2].http)
        client.new_account()
        n = 0
        while True:
            with load.lock:
                if orders_left[0] == 0:
                    return
                orders_left[0] -= 1
            n += 1
            key = ec.generate_private_key(ec.SECP256R1())
            known: list[str] = []

            def order(replica: Replica, known: list[str] = known, key: Any = key) -> str:
                client.http = replica.http  # the nonces it holds are good on both
                if not known:  # a newOrder answer lost with the replica: order again
                    known.append(client.new_order([NAME])[0])
                return finish_order(client, known[0], responder, key)

            chain = load.attempt(w + n, order)
            leaf = x509.load_pem_x509_certificate(chain.encode())
            serial = serial_hex(leaf.serial_number)
            load.record(serial, chain)
            with load.lock:
                load.orders[known[0]] = serial

    def guarded(target: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                target(*args)
            except Exception as exc:
                with load.lock:
                    load.errors.append(f"{type(exc).__name__}: {exc}")

        return run

    # One validation caught in the middle: the victim is running it when it dies.
    caught, caught_url, release = catch_validation(load, server, responder)
    threads = [threading.Thread(target=guarded(enroller)) for _ in range(WORKERS)]
    threads += [threading.Thread(target=guarded(orderer, w)) for w in range(WORKERS)]
    deadline = time.monotonic() + LOAD_SECONDS
    for t in threads:
        t.start()
    # Mid-load: once both replicas have done some of each kind of work.
    while time.monotonic() < deadline and not load.errors:
        with load.lock:
            ready = (
                min(load.done_on) >= 3
                and len(load.orders) >= ORDERS // 3
                and len(load.enrolled) >= ENROLLMENTS // 3
            )
        if ready:
            break
        time.sleep(0.01)
    load.killed.set()
    load.replicas[load.victim].service.proc.kill()  # SIGKILL: no goodbye, no cleanup
    load.replicas[load.victim].service.proc.wait()
    release.set()
    # The other replica takes the challenge over once the dead one has stopped beating.
    caught.http = load.replicas[1 - load.victim].http
    key = ec.generate_private_key(ec.SECP256R1())
    chain = finish_order(caught, caught_url, responder, key)
    serial = serial_hex(x509.load_pem_x509_certificate(chain.encode()).serial_number)
    load.record(serial, chain)
    load.orders[caught_url] = serial
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the load did not end in time"
    assert not load.errors, load.errors


def catch_validation(
    load: Load, server: AcmeServer, responder: Http01Responder
) -> tuple[AcmeClient, str, threading.Event]:
    """An order whose http-01 validation the victim has started and not finished (our
    responder holds its request for as long as it takes): (the client, the order URL,
    what lets it through)."""
    client = AcmeClient(server.directory, load.replicas[load.victim].http)
    client.new_account()
    order_url, order = client.new_order([NAME])
    authz = client.get(order["authorizations"][0])
    chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
    responder.add(NAME, chall["token"], client.key_authorization(chall["token"]))
    waiting, release = responder.hold(chall["token"])
    assert client.post(chall["url"], {}).json()["status"] == "processing"
    assert waiting.wait(10), "the victim did not start the validation"
    return client, order_url, release


def serials(postgres_url: str) -> set[str]:
    db = open_database(postgres_url)
    try:
        with db.transaction() as tx:
            return {r["serial"] for r in tx.all("SELECT serial FROM certs")}
    finally:
        db.close()


def test_two_replicas_one_killed_mid_load(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], postgres_url: str
) -> None:
    ca_dir = tmp_path / "ca"
    init_seed(ca_dir)
    server = start_mtlskit_acme(procs, ca_dir, "--db", postgres_url, "--rate-limit", "100000")
    second, transport = start_replica(server, procs, "--db", postgres_url)
    assert server.service is not None
    responder = Http01Responder(server.http_port)
    tls = ssl.create_default_context(cafile=str(server.tls_root))
    try:
        with httpx.Client(verify=tls) as http, httpx.Client(transport=transport) as via:
            # A nonce from one is good on the other, an order moves between them.
            check_replicas_share_state(server, http, via, responder)
            before = serials(postgres_url)
            first_url = server.directory.removesuffix("/acme/directory")
            load = Load(
                [
                    Replica("first", first_url, http, server.service),
                    Replica("second", f"https://127.0.0.1:{second.port}", via, second),
                ]
            )
            run_load(load, server, postgres_url, ca_dir, responder)
    finally:
        responder.close()

    # Every client got its certificate, every one different.
    assert len(load.enrolled) == ENROLLMENTS and len(load.orders) == ORDERS + 1
    assert load.done_on[1] >= 3, "the killed replica did its share before dying"
    print(
        f"\nserved by first/second: {load.done_on}; requests that died with the second "
        f"and were sent again to the first: {load.interrupted}"
    )
    db = open_database(postgres_url)
    try:
        with db.transaction() as tx:
            certs = {r["serial"]: r["pem"] for r in tx.all("SELECT serial, pem FROM certs")}
            count = tx.one("SELECT COUNT(*) AS n, COUNT(DISTINCT serial) AS d FROM certs")
            tokens = tx.all("SELECT id, used_at, serial FROM tokens")
            orders = {r["id"]: r for r in tx.all("SELECT id, status, serial FROM acme_orders")}
            stuck = tx.all(
                "SELECT id, status FROM acme_challenges WHERE status = 'processing' "
                "UNION ALL SELECT id, status FROM acme_orders WHERE status = 'processing'"
            )
    finally:
        db.close()
    assert count is not None and count["n"] == count["d"]  # serials unique
    # Every certificate a client holds is in the inventory, as it was handed out.
    for serial, pem in load.certs.items():
        assert serial in certs, f"{serial} was handed out but is not in the inventory"
        assert certs[serial].strip().startswith(pem.strip())
    # ... and the load added nothing else to it (nothing issued that no client can get).
    assert set(certs) - before == set(load.certs)
    # No token spent without its certificate; each names the one its client holds.
    for row in tokens:
        assert row["used_at"] and row["serial"] in certs, row
        assert load.enrolled[row["id"]] == row["serial"]
    # Every order a client made is valid with the certificate it got; nothing stuck.
    for url, serial in load.orders.items():
        order = orders[url.rsplit("/", 1)[1]]
        assert order["status"] == "valid" and order["serial"] == serial
    assert not stuck, stuck
    # The survivor serves on.
    assert server.service.get("/healthz").status == 200
