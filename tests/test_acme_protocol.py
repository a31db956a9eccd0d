"""ACME (RFC 8555) on a real `mtlskit ca serve`, driven by a josepy client.

Accounts (create, find, onlyReturnExisting, contact, key change, deactivate),
every accepted algorithm, orders for dns and ip (RFC 8738) identifiers proven by
http-01 and tls-alpn-01 (RFC 8737) responders on loopback, validation failures
with their problem types, revocation, External Account Binding, rate limits, a
second replica on the same database, and the metrics.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bench.acme_client import (
    AcmeClient,
    AcmeError,
    Http01Responder,
    TlsAlpn01Responder,
    identifier,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlskit.database import open_database
from mtlskit.pki.seed import init_seed
from tests.support.acme import (
    NAME,
    AcmeServer,
    cert_status,
    check_replicas_share_state,
    issued_count,
    need,
    problem_type,
    start_mtlskit_acme,
    start_replica,
)
from tests.support.processes import PostgresCluster, free_port

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_procs: list[subprocess.Popen[bytes]]
) -> AcmeServer:
    ca_dir = tmp_path_factory.mktemp("acme") / "ca"
    init_seed(ca_dir)
    metrics = free_port()
    server = start_mtlskit_acme(
        module_procs, ca_dir, "--rate-limit", "10000", "--metrics-port", str(metrics)
    )
    server.metrics_port = metrics
    return server


@pytest.fixture(scope="module")
def http(server: AcmeServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def responders(server: AcmeServer) -> Iterator[tuple[Http01Responder, TlsAlpn01Responder]]:
    http01 = Http01Responder(server.http_port)
    alpn = TlsAlpn01Responder(server.tls_port)
    yield http01, alpn
    http01.close()
    alpn.close()


def account(server: AcmeServer, http: httpx.Client, key: object = None) -> AcmeClient:
    client = (
        AcmeClient(server.directory, http, key=key) if key else AcmeClient(server.directory, http)
    )
    client.new_account(contact=["mailto:ops@example.internal"])
    return client


def test_directory_and_nonces(server: AcmeServer, http: httpx.Client) -> None:
    directory = http.get(server.directory)
    assert directory.status_code == 200
    body = directory.json()
    for key in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert body[key].startswith(server.directory.removesuffix("/directory"))
    assert body["meta"]["externalAccountRequired"] is False
    head = http.head(body["newNonce"])
    get = http.get(body["newNonce"])
    assert (head.status_code, get.status_code) == (200, 204)
    assert head.headers["Cache-Control"] == "no-store"
    nonces = {r.headers["Replay-Nonce"] for r in (directory, head, get)}
    assert len(nonces) == 3
    # Every response, an error too, carries a fresh nonce and links the directory.
    missing = http.get(server.directory.replace("directory", "nothing-here"))
    assert missing.status_code == 404 and problem_type(missing) == "malformed"
    assert 'rel="index"' in missing.headers["Link"]


def test_account_lifecycle(server: AcmeServer, http: httpx.Client) -> None:
    client = AcmeClient(server.directory, http)
    with pytest.raises(AcmeError) as info:
        client.new_account(only_existing=True)
    assert info.value.type == "accountDoesNotExist"
    created = client.new_account(contact=["mailto:a@example.internal"])
    assert created.status_code == 201
    assert created.json()["status"] == "valid"
    again = client.new_account()
    assert again.status_code == 200 and again.headers["Location"] == created.headers["Location"]
    found = client.new_account(only_existing=True)
    assert found.headers["Location"] == client.kid

    updated = client.post(client.kid, {"contact": ["mailto:b@example.internal"]}).json()
    assert updated["contact"] == ["mailto:b@example.internal"]
    for contact, kind in (("tel:+1555", "unsupportedContact"), ("mailto:nobody", "invalidContact")):
        bad = client.post(client.kid, {"contact": [contact]}, check=False)
        assert problem_type(bad) == kind
    orders_url = client.get(client.kid)["orders"]
    order_url, _ = client.new_order(["one.internal"])
    assert order_url in client.get(orders_url)["orders"]

    # Key change: the old key stops working, the new one signs for the same account.
    old_key = client.key
    new_key = ec.generate_private_key(ec.SECP256R1())
    client.key_change(new_key)
    assert client.get(client.kid)["status"] == "valid"
    stale = client.post(client.kid, None, key=old_key, check=False)
    assert problem_type(stale) == "malformed"  # the signature no longer verifies
    empty = client.post(client.directory["keyChange"], b"", check=False)  # no inner JWS
    assert problem_type(empty) == "malformed"
    other = account(server, http)
    with pytest.raises(AcmeError) as info:
        other.key_change(new_key)  # already client's key
    assert info.value.response.status_code == 409
    assert info.value.response.headers["Location"] == client.kid

    deactivated = client.post(client.kid, {"status": "deactivated"}).json()
    assert deactivated["status"] == "deactivated"
    refused = client.post(client.directory["newOrder"], {"identifiers": []}, check=False)
    assert problem_type(refused) == "unauthorized"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="ES256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ES384"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="RS256"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="EdDSA"),
    ],
)
def test_accepted_algorithms(server: AcmeServer, http: httpx.Client, key: object) -> None:
    client = account(server, http, key=key())  # type: ignore[operator]
    _, order = client.new_order(["alg.internal"])
    assert order["status"] == "pending"


def test_weak_or_unlisted_keys(server: AcmeServer, http: httpx.Client) -> None:
    weak = AcmeClient(server.directory, http, key=rsa.generate_private_key(65537, 1024))
    with pytest.raises(AcmeError) as info:
        weak.new_account()
    assert info.value.type == "badPublicKey"
    p521 = AcmeClient(server.directory, http, key=ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(AcmeError) as info:
        p521.new_account()
    assert info.value.type == "badSignatureAlgorithm"
    assert "ES256" in info.value.problem["algorithms"]


@pytest.mark.parametrize("kind", ["http-01", "tls-alpn-01"])
def test_order_dns_and_ip(
    server: AcmeServer,
    http: httpx.Client,
    responders: tuple[Http01Responder, TlsAlpn01Responder],
    kind: str,
) -> None:
    client = account(server, http)
    responder = responders[0] if kind == "http-01" else responders[1]
    order_url, chain, _ = client.obtain([NAME, "127.0.0.1"], responder=responder)
    certs = x509.load_pem_x509_certificates(chain.encode())
    assert len(certs) == 2  # the leaf and its issuer (certbot wants a chain)
    leaf = certs[0]
    assert certs[1].subject == leaf.issuer
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans.get_values_for_type(x509.DNSName))) == [NAME]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(hours=23) < lifetime <= dt.timedelta(hours=24, minutes=2)
    order = client.get(order_url)
    assert order["status"] == "valid" and order["certificate"].endswith(order_url.rsplit("/")[-1])
    authz = client.get(order["authorizations"][0])
    assert [c["type"] for c in authz["challenges"]] == [kind]
    assert authz["challenges"][0]["status"] == "valid" and "validated" in authz["challenges"][0]


def _first_challenge(client: AcmeClient, name: str, kind: str) -> tuple[str, str, dict]:
    order_url, order = client.new_order([name])
    authz_url = order["authorizations"][0]
    authz = client.get(authz_url)
    assert {c["type"] for c in authz["challenges"]} == {"http-01", "tls-alpn-01"}
    return order_url, authz_url, next(c for c in authz["challenges"] if c["type"] == kind)


def _invalid_reason(client: AcmeClient, order_url: str, authz_url: str) -> str:
    with pytest.raises(RuntimeError):
        client.poll(authz_url, until=("valid",))
    authz = client.get(authz_url)
    assert authz["status"] == "invalid"
    error = next(c["error"] for c in authz["challenges"] if "error" in c)
    order = client.get(order_url)
    assert order["status"] == "invalid" and order["error"]["type"] == error["type"]
    finalize = client.post(order["finalize"], {"csr": "AAAA"}, check=False)
    assert problem_type(finalize) == "orderNotReady"
    return str(error["type"]).rsplit(":", 1)[1]


def test_validation_failures(
    server: AcmeServer,
    http: httpx.Client,
    responders: tuple[Http01Responder, TlsAlpn01Responder],
) -> None:
    assert server.service is not None
    before = issued_count(server.service.ca_dir)
    client = account(server, http)
    http01, alpn = responders
    # A wrong key authorization.
    order_url, authz_url, chall = _first_challenge(client, NAME, "http-01")
    http01.add(NAME, chall["token"], chall["token"] + ".not-the-thumbprint")
    client.post(chall["url"], {})
    assert _invalid_reason(client, order_url, authz_url) == "incorrectResponse"
    # No token there at all (404).
    order_url, authz_url, chall = _first_challenge(client, NAME, "http-01")
    client.post(chall["url"], {})
    assert _invalid_reason(client, order_url, authz_url) == "unauthorized"
    # Nothing listening: the name resolves to an address no one serves.
    order_url, authz_url, chall = _first_challenge(client, "nowhere.invalid.internal", "http-01")
    client.post(chall["url"], {})
    assert _invalid_reason(client, order_url, authz_url) in ("dns", "connection")
    # tls-alpn-01 with the acmeIdentifier extension not critical.
    alpn.critical = False
    try:
        order_url, authz_url, chall = _first_challenge(client, NAME, "tls-alpn-01")
        alpn.add(NAME, chall["token"], client.key_authorization(chall["token"]))
        client.post(chall["url"], {})
        assert _invalid_reason(client, order_url, authz_url) == "unauthorized"
    finally:
        alpn.critical = True
    assert issued_count(server.service.ca_dir) == before


def test_authorization_deactivated(server: AcmeServer, http: httpx.Client) -> None:
    client = account(server, http)
    order_url, order = client.new_order(["gone.internal"])
    authz = client.post(order["authorizations"][0], {"status": "deactivated"}).json()
    assert authz["status"] == "deactivated"
    assert client.get(order_url)["status"] == "invalid"


def test_revocation_rules(
    server: AcmeServer,
    http: httpx.Client,
    responders: tuple[Http01Responder, TlsAlpn01Responder],
) -> None:
    assert server.service is not None
    owner = account(server, http)
    _, chain, cert_key = owner.obtain([NAME], responder=responders[0])
    serial = format(x509.load_pem_x509_certificate(chain.encode()).serial_number, "x")
    stranger = account(server, http)
    with pytest.raises(AcmeError) as info:
        stranger.revoke(chain)
    assert info.value.type == "unauthorized"
    with pytest.raises(AcmeError) as info:
        owner.revoke(chain, reason=7)  # not a reason a subscriber may give
    assert info.value.type == "badRevocationReason"
    assert cert_status(server.service.ca_dir, serial) == "valid"
    # Signed by the certificate's own key, no account needed (RFC 8555 7.6).
    stranger.revoke(chain, reason=1, key=cert_key)
    assert cert_status(server.service.ca_dir, serial) == "revoked"
    with pytest.raises(AcmeError) as info:
        owner.revoke(chain)
    assert info.value.type == "alreadyRevoked"
    # Another CA's certificate.
    other = Path(server.workdir) / "other-ca"
    init_seed(other)
    with pytest.raises(AcmeError) as info:
        owner.revoke((other / "server.crt").read_text())
    assert info.value.type == "malformed"


def test_second_replica_shares_nonces_and_orders(
    server: AcmeServer,
    http: httpx.Client,
    responders: tuple[Http01Responder, TlsAlpn01Responder],
    module_procs: list[subprocess.Popen[bytes]],
) -> None:
    """Two `ca serve` on one SQLite file (one machine)."""
    replica, transport = start_replica(server, module_procs)
    with httpx.Client(transport=transport) as via:
        check_replicas_share_state(server, http, via, responders[0])
    replica.stop()


def test_rate_limit(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    ca_dir = tmp_path / "ca"
    init_seed(ca_dir)
    limited = start_mtlskit_acme(procs, ca_dir, "--rate-limit", "4")
    with limited.client() as http:
        client = AcmeClient(limited.directory, http)
        client.new_account()  # 1 for this address
        seen = []
        for _ in range(6):
            response = client.post(client.kid, None, check=False)
            seen.append(response.status_code)
            if response.status_code == 429:
                assert problem_type(response) == "rateLimited"
                assert 1 <= int(response.headers["Retry-After"]) <= 60
                break
        assert seen[:4] == [200] * 4 and seen[-1] == 429


def test_external_account_binding(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    ca_dir = tmp_path / "ca"
    init_seed(ca_dir)
    mac = secrets.token_bytes(32)
    mac_b64 = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    eab = start_mtlskit_acme(procs, ca_dir, "--acme-eab", f"team-a:{mac_b64}")
    with eab.client() as http:
        client = AcmeClient(eab.directory, http)
        assert client.directory["meta"]["externalAccountRequired"] is True
        with pytest.raises(AcmeError) as info:
            client.new_account()
        assert info.value.type == "externalAccountRequired"
        with pytest.raises(AcmeError) as info:
            client.new_account(eab=("team-a", secrets.token_bytes(32)))
        assert info.value.type == "unauthorized"
        with pytest.raises(AcmeError) as info:
            client.new_account(eab=("team-b", mac))
        assert info.value.type == "unauthorized"
        assert client.new_account(eab=("team-a", mac)).status_code == 201
    # lego, a real client, with the same binding.
    need("lego")
    proc = subprocess.run(
        [
            "lego",
            "--server",
            eab.directory,
            "--accept-tos",
            "--email",
            "ops@example.internal",
            "--path",
            str(tmp_path / "lego"),
            "--eab",
            "--kid",
            "team-a",
            "--hmac",
            mac_b64,
            "--domains",
            NAME,
            "--http",
            "--http.port",
            f"127.0.0.1:{eab.http_port}",
            "run",
        ],
        env={"LEGO_CA_CERTIFICATES": str(eab.tls_root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_metrics(server: AcmeServer, http: httpx.Client) -> None:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'mtlskit_acme_requests_total{type="new-account",outcome="ok"}' in text
    assert 'mtlskit_acme_requests_total{type="validate-http-01",outcome="valid"}' in text
    assert 'mtlskit_ca_issuances_total{route="acme",outcome="issued"}' in text
    count = [
        line
        for line in text.splitlines()
        if line.startswith("mtlskit_acme_validation_seconds_count")
    ]
    assert count and float(count[0].split()[-1]) > 0


def test_stale_validation_is_started_again(
    server: AcmeServer,
    http: httpx.Client,
    responders: tuple[Http01Responder, TlsAlpn01Responder],
) -> None:
    """A challenge left "processing" (its replica died before saving the result) is
    validated again by the next replica that looks at it once it is stale."""
    assert server.service is not None
    client = account(server, http)
    order_url, order = client.new_order([NAME])
    authz_url = order["authorizations"][0]
    chall = next(c for c in client.get(authz_url)["challenges"] if c["type"] == "http-01")
    chall_id = chall["url"].rsplit("/", 1)[1]
    db = open_database(server.service.ca_dir / "ca.db")
    try:
        with db.transaction() as tx:  # as a replica that claimed it, then died
            tx.execute(
                "UPDATE acme_challenges SET status = 'processing', body = ? WHERE id = ?",
                ('{"processing_since": "2000-01-01T00:00:00Z"}', chall_id),
            )
    finally:
        db.close()
    responders[0].add(NAME, chall["token"], client.key_authorization(chall["token"]))
    assert client.poll(authz_url, until=("valid",))["status"] == "valid"
    assert client.get(order_url)["status"] == "ready"


@pytest.mark.slow
def test_database_down_then_back(
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    postgres_cluster: PostgresCluster,
    postgres_url: str,
) -> None:
    """PostgreSQL stops: ACME answers 503 serverInternal with Retry-After, no traceback,
    nothing half-written; once it is back, the same client goes on."""
    ca_dir = tmp_path / "ca"
    init_seed(ca_dir)
    server = start_mtlskit_acme(procs, ca_dir, "--db", postgres_url, "--rate-limit", "10000")
    http01 = Http01Responder(server.http_port)
    try:
        with server.client() as http:
            client = account(server, http)
            postgres_cluster.stop()
            try:
                for url, body in (
                    (client.directory["newOrder"], {"identifiers": [identifier(NAME)]}),
                    (client.kid, None),
                ):
                    response = client.post(url, body, check=False, nonce="any")
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert response.json()["type"].endswith(":serverInternal")
                    assert int(response.headers["Retry-After"]) > 0
                    assert "Traceback" not in response.text
                down = http.head(client.directory["newNonce"])
                assert down.status_code == 503 and "Replay-Nonce" not in down.headers
            finally:
                postgres_cluster.start()
            client.nonces.clear()
            _, chain, _ = client.obtain([NAME], responder=http01)
            assert chain.startswith("-----BEGIN CERTIFICATE-----")
    finally:
        http01.close()
