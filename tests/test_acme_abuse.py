"""Bad and hostile ACME requests: each answered with its RFC 8555 problem type, a fresh
Replay-Nonce and no traceback; nothing is issued; the server keeps serving."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from bench.acme_client import AcmeClient, Http01Responder, make_csr, sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mtlskit.database import open_database
from mtlskit.pki.seed import init_seed
from tests.support.acme import (
    NAME,
    AcmeServer,
    issued_count,
    problem_type,
    start_mtlskit_acme,
)

pytestmark = pytest.mark.interop


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_procs: list[subprocess.Popen[bytes]]
) -> AcmeServer:
    ca_dir = tmp_path_factory.mktemp("abuse") / "ca"
    init_seed(ca_dir)
    return start_mtlskit_acme(module_procs, ca_dir, "--rate-limit", "10000", "--max-body", "4096")


@pytest.fixture(scope="module")
def http(server: AcmeServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def client(server: AcmeServer, http: httpx.Client) -> AcmeClient:
    c = AcmeClient(server.directory, http)
    c.new_account()
    return c


@pytest.fixture(scope="module")
def ready_order(server: AcmeServer, client: AcmeClient) -> Iterator[dict[str, Any]]:
    """An order for app.internal whose authorization is valid: only finalize is left."""
    responder = Http01Responder(server.http_port)
    try:
        order_url, order = client.new_order([NAME])
        authz = client.get(order["authorizations"][0])
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        responder.add(NAME, chall["token"], client.key_authorization(chall["token"]))
        client.post(chall["url"], {})
        order = client.poll(order_url, until=("ready",))
    finally:
        responder.close()
    yield {**order, "url": order_url}


@pytest.fixture(autouse=True)
def nothing_issued(server: AcmeServer, http: httpx.Client) -> Iterator[None]:
    """Around every test here: no certificate issued, the server still answers."""
    assert server.service is not None
    before = issued_count(server.service.ca_dir)
    yield
    assert issued_count(server.service.ca_dir) == before
    assert http.get(server.directory).status_code == 200


def raw_post(
    http: httpx.Client, url: str, body: bytes | dict[str, Any], **headers: str
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(
        url, content=content, headers={"Content-Type": "application/jose+json", **headers}
    )


BAD_BODIES: list[tuple[str, Callable[[AcmeClient], bytes]]] = [
    ("not JSON", lambda c: b"{not json"),
    ("a JSON array", lambda c: b"[]"),
    ("compact JWS", lambda c: b'"eyJhbGciOiJFUzI1NiJ9.e30.c2ln"'),
    ("no signature", lambda c: json.dumps({"protected": "e30", "payload": ""}).encode()),
    (
        "an unprotected header",
        lambda c: json.dumps(
            {
                **sign(b"{}", c.key, url=c.directory["newOrder"], nonce=c.nonce(), kid=c.kid),
                "header": {"kid": c.kid},
            }
        ).encode(),
    ),
    (
        "protected not base64",
        lambda c: json.dumps({"protected": "%%%", "payload": "", "signature": ""}).encode(),
    ),
    (
        "a bad signature",
        lambda c: json.dumps(
            {
                **sign(b"{}", c.key, url=c.directory["newOrder"], nonce=c.nonce(), kid=c.kid),
                "signature": b64(b"\0" * 64),
            }
        ).encode(),
    ),
    (
        "a payload that is not JSON",
        lambda c: json.dumps(
            sign(b"\xff\xfe", c.key, url=c.directory["newOrder"], nonce=c.nonce(), kid=c.kid)
        ).encode(),
    ),
]


@pytest.mark.parametrize("make", [m for _, m in BAD_BODIES], ids=[n for n, _ in BAD_BODIES])
def test_malformed_json_and_jws(
    http: httpx.Client, client: AcmeClient, make: Callable[[AcmeClient], bytes]
) -> None:
    response = raw_post(http, client.directory["newOrder"], make(client))
    assert response.status_code == 400
    assert problem_type(response) == "malformed"


def test_wrong_content_type_and_method(http: httpx.Client, client: AcmeClient) -> None:
    body = sign(
        b"{}", client.key, url=client.directory["newOrder"], nonce=client.nonce(), kid=client.kid
    )
    response = http.post(client.directory["newOrder"], json=body)  # application/json
    assert response.status_code == 415 and problem_type(response) == "malformed"
    response = http.get(client.directory["newOrder"])
    assert response.status_code == 405 and problem_type(response) == "malformed"
    assert response.headers["Allow"] == "POST"


def test_unknown_account(server: AcmeServer, client: AcmeClient) -> None:
    ghost = client.kid.rsplit("/", 1)[0] + "/no-such-account"  # type: ignore[union-attr]
    body = sign(
        b"{}", client.key, url=client.directory["newOrder"], nonce=client.nonce(), kid=ghost
    )
    response = client.send(client.directory["newOrder"], body)
    assert problem_type(response) == "accountDoesNotExist"
    elsewhere = "https://ca.example/acme/acct/" + client.kid.rsplit("/", 1)[1]  # type: ignore[union-attr]
    body = sign(
        b"{}", client.key, url=client.directory["newOrder"], nonce=client.nonce(), kid=elsewhere
    )
    assert problem_type(client.send(client.directory["newOrder"], body)) == "accountDoesNotExist"
    stranger = AcmeClient(server.directory, client.http)
    response = stranger.post(
        stranger.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True, check=False
    )
    assert problem_type(response) == "accountDoesNotExist"


def test_replayed_and_foreign_nonces(client: AcmeClient) -> None:
    nonce = client.nonce()
    first = client.post(client.kid, None, nonce=nonce)  # type: ignore[arg-type]
    assert first.status_code == 200
    replay = client.post(client.kid, None, nonce=nonce, check=False)  # type: ignore[arg-type]
    assert replay.status_code == 400 and problem_type(replay) == "badNonce"
    made_up = client.post(client.kid, None, nonce=b64(b"x" * 16), check=False)  # type: ignore[arg-type]
    assert problem_type(made_up) == "badNonce"
    missing = sign(b"", client.key, url=client.kid, nonce=None, kid=client.kid)  # type: ignore[arg-type]
    assert problem_type(client.send(client.kid, missing)) == "badNonce"  # type: ignore[arg-type]


def test_wrong_url(client: AcmeClient) -> None:
    response = client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": NAME}]},
        url_header=client.directory["revokeCert"],
        check=False,
    )
    assert response.status_code == 403 and problem_type(response) == "unauthorized"
    no_url = sign(b"", client.key, url=None, nonce=client.nonce(), kid=client.kid)
    assert problem_type(client.send(client.kid, no_url)) == "malformed"  # type: ignore[arg-type]


def test_unsupported_algorithms(http: httpx.Client, client: AcmeClient) -> None:
    url = client.directory["newOrder"]
    rsa_key = rsa.generate_private_key(65537, 2048)
    for alg, key in (("RS512", rsa_key), ("PS256", rsa_key), ("HS256", None)):
        if key is None:
            body = sign(
                b"{}",
                None,
                url=url,
                nonce=client.nonce(),
                kid=client.kid,
                hmac_key=b"k" * 32,
                alg=alg,
            )
        else:
            body = sign(b"{}", key, url=url, nonce=client.nonce(), kid=client.kid, alg=alg)
        response = raw_post(http, url, body)
        assert problem_type(response) == "badSignatureAlgorithm", alg
        assert "ES256" in response.json()["algorithms"]
    header = b64(
        json.dumps({"alg": "none", "url": url, "nonce": client.nonce(), "kid": client.kid}).encode()
    )
    response = raw_post(http, url, {"protected": header, "payload": b64(b"{}"), "signature": ""})
    assert problem_type(response) == "badSignatureAlgorithm"


def test_jwk_and_kid_rules(http: httpx.Client, client: AcmeClient) -> None:
    url = client.directory["newOrder"]
    # jwk where a kid is needed.
    response = client.post(url, {"identifiers": []}, use_jwk=True, check=False)
    assert problem_type(response) == "malformed"
    # kid on newAccount.
    response = client.post(client.directory["newAccount"], {}, check=False)
    assert problem_type(response) == "malformed"
    # Both at once.
    from bench.acme_client import jwk_of

    body = sign(
        b"{}",
        client.key,
        url=url,
        nonce=client.nonce(),
        kid=client.kid,
        embed_jwk=jwk_of(client.key).public_key(),
    )
    assert problem_type(raw_post(http, url, body)) == "malformed"


def test_identifiers_refused(client: AcmeClient) -> None:
    url = client.directory["newOrder"]
    cases = [
        ([{"type": "dns", "value": "www.example.com"}], "rejectedIdentifier"),
        ([{"type": "ip", "value": "192.0.2.1"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "*.app.internal"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "bad_name!.internal"}], "rejectedIdentifier"),
        ([{"type": "email", "value": "a@b.internal"}], "unsupportedIdentifier"),
        ([{"type": "ip", "value": "not-an-ip"}], "malformed"),
        ([{"type": "dns", "value": "127.0.0.1"}], "malformed"),
        ([], "malformed"),
        ("app.internal", "malformed"),
    ]
    for identifiers, kind in cases:
        response = client.post(url, {"identifiers": identifiers}, check=False)
        assert problem_type(response) == kind, identifiers
    response = client.post(
        url,
        {"identifiers": [{"type": "dns", "value": NAME}], "notAfter": "2099-01-01T00:00:00Z"},
        check=False,
    )
    assert problem_type(response) == "malformed"
    # Several refused at once: one problem with a subproblem for each.
    response = client.post(
        url,
        {
            "identifiers": [
                {"type": "dns", "value": "a.example.com"},
                {"type": "dns", "value": "b.example.com"},
                {"type": "dns", "value": NAME},
            ]
        },
        check=False,
    )
    assert problem_type(response) == "rejectedIdentifier"
    sub = response.json()["subproblems"]
    assert [s["identifier"]["value"] for s in sub] == ["a.example.com", "b.example.com"]


def test_finalize_before_valid(client: AcmeClient) -> None:
    _, order = client.new_order([NAME])
    key = ec.generate_private_key(ec.SECP256R1())
    response = client.post(order["finalize"], {"csr": b64(make_csr(key, [NAME]))}, check=False)
    assert response.status_code == 403 and problem_type(response) == "orderNotReady"


def _finalize(client: AcmeClient, order: dict[str, Any], csr: bytes | str) -> httpx.Response:
    value = csr if isinstance(csr, str) else b64(csr)
    return client.post(order["finalize"], {"csr": value}, check=False)


def test_bad_csrs(client: AcmeClient, ready_order: dict[str, Any]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "names not in the order": make_csr(key, [NAME, "other.internal"]),
        "a name missing": make_csr(key, ["other.internal"]),
        "a CN outside the order": make_csr(key, [NAME], cn="evil.internal"),
        "CA:TRUE": make_csr(key, [NAME], ca=True),
        "the account key": make_csr(client.key, [NAME]),
        "a weak RSA key": make_csr(rsa.generate_private_key(65537, 1024), [NAME]),
        "not a CSR": b"\x30\x03\x02\x01\x00",
    }
    for why, csr in cases.items():
        response = _finalize(client, ready_order, csr)
        assert problem_type(response) == "badCSR", why
    assert problem_type(_finalize(client, ready_order, "%%")) == "malformed"
    assert problem_type(client.post(ready_order["finalize"], {}, check=False)) == "malformed"
    # Still ready: a bad CSR does not spend the order.
    assert client.get(ready_order["url"])["status"] == "ready"


def test_other_accounts_objects(
    server: AcmeServer, client: AcmeClient, ready_order: dict[str, Any]
) -> None:
    other = AcmeClient(server.directory, client.http)
    other.new_account()
    for url in (ready_order["url"], ready_order["authorizations"][0], client.kid):
        response = other.post(url, None, check=False)  # type: ignore[arg-type]
        assert problem_type(response) == "unauthorized", url
    key = ec.generate_private_key(ec.SECP256R1())
    response = other.post(ready_order["finalize"], {"csr": b64(make_csr(key, [NAME]))}, check=False)
    assert problem_type(response) == "unauthorized"


def test_body_too_large(server: AcmeServer, http: httpx.Client, client: AcmeClient) -> None:
    big = json.dumps({"protected": "e30", "payload": "A" * 8192, "signature": ""}).encode()
    response = raw_post(http, client.directory["newOrder"], big)
    assert response.status_code == 413 and problem_type(response) == "malformed"

    def chunks() -> Iterator[bytes]:
        for _ in range(16):
            yield b"A" * 1024

    response = http.post(
        client.directory["newOrder"],
        content=chunks(),
        headers={"Content-Type": "application/jose+json"},
    )
    assert response.status_code == 413 and problem_type(response) == "malformed"


def test_garbage_on_the_wire(server: AcmeServer) -> None:
    """A request line that is not HTTP: the server answers or closes, and keeps serving."""
    port = int(server.directory.split(":")[2].split("/")[0])
    ctx = ssl.create_default_context(cafile=str(server.tls_root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"\x00\x01garbage\r\n\r\n")
        try:
            reply = tls.recv(4096)
        except (ConnectionError, ssl.SSLError):
            reply = b""
    assert b"Traceback" not in reply


def test_revoke_garbage(client: AcmeClient) -> None:
    url = client.directory["revokeCert"]
    assert problem_type(client.post(url, {"certificate": "%%"}, check=False)) == "malformed"
    assert problem_type(client.post(url, {"certificate": b64(b"junk")}, check=False)) == "malformed"
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert problem_type(client.post(url, {"certificate": b64(der)}, check=False)) == "malformed"


def test_expired_nonce(server: AcmeServer, client: AcmeClient) -> None:
    assert server.service is not None
    nonce = client.nonce()
    db = open_database(server.service.ca_dir / "ca.db")
    try:
        with db.transaction() as tx:
            tx.execute(
                "UPDATE acme_nonces SET expires_at = '2000-01-01T00:00:00Z' WHERE nonce = ?",
                (nonce,),
            )
    finally:
        db.close()
    response = client.post(client.kid, None, nonce=nonce, check=False)  # type: ignore[arg-type]
    assert problem_type(response) == "badNonce"
