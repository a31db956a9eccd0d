"""A small ACME (RFC 8555) client on josepy + httpx, for the tests and the bench.

It speaks to any ACME server (mtlskit's, pebble) the way certbot and lego do,
and can also send what they never would (a replayed nonce, a wrong ``url``, an
unsupported algorithm) for the abuse tests. Its http-01 responder is a real
HTTP server on 127.0.0.1, its tls-alpn-01 responder a real TLS server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.server
import ipaddress
import json
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from josepy.json_util import encode_b64jose
from josepy.jwa import JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA, JWKOct

from mtlskit.service.acme.jws import JWKOKP, AcmeJWS

__all__ = ["AcmeClient", "AcmeError", "Http01Responder", "TlsAlpn01Responder", "make_csr"]

ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
PROTECT = frozenset({"alg", "nonce", "url", "kid", "jwk"})


class AcmeError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"detail": response.text}
        self.type = str(self.problem.get("type", "")).rsplit(":", 1)[-1]
        super().__init__(f"{response.status_code} {self.type}: {self.problem.get('detail')}")


def jwk_of(key: Any) -> JWK:
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return JWKOKP(key=key)
    raise TypeError(type(key))


def alg_of(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384"}.get(key.curve.name, "ES512")
    return "EdDSA"


def sign(
    payload: bytes,
    key: Any,
    *,
    url: str | None,
    nonce: str | None,
    kid: str | None,
    alg: str | None = None,
    hmac_key: bytes | None = None,
    embed_jwk: JWK | None = None,
) -> dict[str, Any]:
    """A flattened JWS as ACME wants it: everything in the protected header."""
    fields: dict[str, Any] = {} if url is None else {"url": url}
    if nonce is not None:
        fields["nonce"] = nonce
    if kid is not None:
        fields["kid"] = kid
    if hmac_key is not None:
        jwk: JWK = JWKOct(key=hmac_key)
        algorithm = JWASignature.from_json(alg or "HS256")
        include = False
    else:
        jwk = jwk_of(key)
        algorithm = JWASignature.from_json(alg or alg_of(key))
        include = kid is None
    if embed_jwk is not None:
        fields["jwk"] = embed_jwk
        include = False
    jws = AcmeJWS.sign(
        payload, key=jwk, alg=algorithm, include_jwk=include, protect=PROTECT, **fields
    )
    return jws.to_partial_json()  # type: ignore[no-any-return]


def make_csr(key: Any, names: list[str], *, cn: str | None = None, ca: bool = False) -> bytes:
    """A DER CSR for ``names`` (IPs become iPAddress SANs)."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(sans), False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def identifier(name: str) -> dict[str, str]:
    try:
        return {"type": "ip", "value": str(ipaddress.ip_address(name))}
    except ValueError:
        return {"type": "dns", "value": name}


@dataclass
class AcmeClient:
    """One ACME account on one server."""

    directory_url: str
    http: httpx.Client
    key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    kid: str | None = None
    nonces: list[str] = field(default_factory=list)
    directory: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        response = self.http.get(self.directory_url)
        response.raise_for_status()
        self.directory = response.json()
        self._keep_nonce(response)

    # -- transport -------------------------------------------------------------------

    def _keep_nonce(self, response: httpx.Response) -> None:
        nonce = response.headers.get("Replay-Nonce")
        if nonce:
            self.nonces.append(nonce)

    def nonce(self) -> str:
        if self.nonces:
            return self.nonces.pop()
        response = self.http.head(self.directory["newNonce"])
        return response.headers["Replay-Nonce"]

    def send(self, url: str, body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self.http.post(
            url, content=content, headers={"Content-Type": "application/jose+json"}
        )
        self._keep_nonce(response)
        return response

    def post(
        self,
        url: str,
        payload: dict[str, Any] | bytes | None,
        *,
        use_jwk: bool = False,
        key: Any = None,
        nonce: str | None = None,
        url_header: str | None = None,
        alg: str | None = None,
        check: bool = True,
        retry_bad_nonce: bool = True,
    ) -> httpx.Response:
        """A signed POST; ``payload=None`` is POST-as-GET. Retries once on badNonce."""
        raw = payload if isinstance(payload, bytes) else b""
        if isinstance(payload, dict):
            raw = json.dumps(payload).encode()
        for attempt in (1, 2):
            body = sign(
                raw,
                key or self.key,
                url=url_header or url,
                nonce=nonce or self.nonce(),
                kid=None if use_jwk else self.kid,
                alg=alg,
            )
            response = self.send(url, body)
            if (
                response.status_code == 400
                and retry_bad_nonce
                and nonce is None
                and attempt == 1
                and "badNonce" in response.text
            ):
                continue  # pebble rejects some good nonces on purpose
            break
        if check and response.status_code >= 400:
            raise AcmeError(response)
        return response

    # -- account ---------------------------------------------------------------------

    def new_account(
        self,
        *,
        contact: list[str] | None = None,
        only_existing: bool = False,
        eab: tuple[str, bytes] | None = None,
    ) -> httpx.Response:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if contact:
            payload["contact"] = contact
        if only_existing:
            payload["onlyReturnExisting"] = True
        url = self.directory["newAccount"]
        if eab is not None:
            eab_kid, mac_key = eab
            account_jwk = json.dumps(jwk_of(self.key).public_key().to_partial_json()).encode()
            payload["externalAccountBinding"] = sign(
                account_jwk, None, url=url, nonce=None, kid=eab_kid, hmac_key=mac_key
            )
        response = self.post(url, payload, use_jwk=True)
        self.kid = response.headers["Location"]
        return response

    # -- orders ----------------------------------------------------------------------

    def new_order(self, names: list[str]) -> tuple[str, dict[str, Any]]:
        response = self.post(
            self.directory["newOrder"], {"identifiers": [identifier(n) for n in names]}
        )
        return response.headers["Location"], response.json()

    def get(self, url: str) -> dict[str, Any]:
        return self.post(url, None).json()  # type: ignore[no-any-return]

    def poll(self, url: str, *, until: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            obj = self.get(url)
            if obj["status"] in until:
                return obj
            if obj["status"] in ("invalid", "expired", "deactivated", "revoked"):
                raise RuntimeError(f"{url} became {obj['status']}: {obj}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} still {obj['status']}")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def key_authorization(self, token: str) -> str:
        return f"{token}.{encode_b64jose(jwk_of(self.key).thumbprint())}"

    def obtain(
        self,
        names: list[str],
        *,
        responder: Http01Responder | TlsAlpn01Responder,
        cert_key: Any = None,
    ) -> tuple[str, str, Any]:
        """newOrder → challenge validated → finalize → download: (order URL, PEM chain, key)."""
        kind = "http-01" if isinstance(responder, Http01Responder) else "tls-alpn-01"
        order_url, order = self.new_order(names)
        for authz_url in order["authorizations"]:
            authz = self.get(authz_url)
            if authz["status"] == "valid":
                continue
            chall = next(c for c in authz["challenges"] if c["type"] == kind)
            responder.add(
                authz["identifier"]["value"], chall["token"], self.key_authorization(chall["token"])
            )
            # As lego does: a challenge answered "valid" needs no polling of its authz.
            if self.post(chall["url"], {}).json()["status"] != "valid":
                self.poll(authz_url, until=("valid",))
        # Every authorization is valid, so the order is ready: finalize at once (as lego).
        key = cert_key or ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, names)
        order = self.post(order["finalize"], {"csr": encode_b64jose(csr)}).json()
        if order["status"] != "valid":
            order = self.poll(order_url, until=("valid",))
        chain = self.post(order["certificate"], None).text
        return order_url, chain, key

    def revoke(
        self, cert_pem: str, *, reason: int | None = None, key: Any = None
    ) -> httpx.Response:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        payload: dict[str, Any] = {
            "certificate": encode_b64jose(cert.public_bytes(serialization.Encoding.DER))
        }
        if reason is not None:
            payload["reason"] = reason
        return self.post(self.directory["revokeCert"], payload, use_jwk=key is not None, key=key)

    def key_change(self, new_key: Any) -> httpx.Response:
        url = self.directory["keyChange"]
        inner_payload = {
            "account": self.kid,
            "oldKey": jwk_of(self.key).public_key().to_partial_json(),
        }
        inner = sign(json.dumps(inner_payload).encode(), new_key, url=url, nonce=None, kid=None)
        response = self.post(url, json.dumps(inner).encode())
        self.key = new_key
        return response


# -- challenge responders ----------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer

    def do_GET(self) -> None:
        prefix = "/.well-known/acme-challenge/"
        token = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        answer = self.server.tokens.get(token)
        if answer is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = answer.encode()
        try:
            self.send_response(200)
            held = self.server.held.get(token)
            if held is not None:
                # A validation caught in the middle (the replica tests): a header line a
                # second keeps the validator reading, well inside its socket timeout.
                self.server.seen_held.set()
                while not held.wait(1):
                    self.send_header("X-Held", "1")
                    self.flush_headers()
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return  # the validator went away (a replica killed in the middle)
        self.server.hits += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    tokens: dict[str, str]
    held: dict[str, threading.Event]
    seen_held: threading.Event
    hits: int


class Http01Responder:
    """Serves /.well-known/acme-challenge/TOKEN on 127.0.0.1:port, in a thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.server = _HttpServer((host, port), _Handler)
        self.server.tokens = {}
        self.server.held = {}
        self.server.seen_held = threading.Event()
        self.server.hits = 0
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, name: str, token: str, key_authorization: str) -> None:
        self.server.tokens[token] = key_authorization

    def hold(self, token: str) -> tuple[threading.Event, threading.Event]:
        """Keep validations of ``token`` waiting (a validation in progress, for as long as
        a test needs): (set when one is waiting, set to let them through)."""
        release = threading.Event()
        self.server.seen_held.clear()
        self.server.held[token] = release
        return self.server.seen_held, release

    @property
    def hits(self) -> int:
        return self.server.hits

    def close(self) -> None:
        for release in self.server.held.values():
            release.set()
        self.server.shutdown()
        self.server.server_close()


def alpn_certificate(
    name: str, key_authorization: str, *, critical: bool = True, digest: bytes | None = None
) -> tuple[bytes, bytes]:
    """RFC 8737 section 3: a self-signed certificate for ``name`` with acmeIdentifier."""
    key = ec.generate_private_key(ec.SECP256R1())
    value = digest if digest is not None else hashlib.sha256(key_authorization.encode()).digest()
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        san = x509.DNSName(name)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn-01")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + value), critical
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class TlsAlpn01Responder:
    """A TLS server on 127.0.0.1:port answering ALPN acme-tls/1 with the challenge
    certificate of the SNI name (RFC 8737; RFC 8738 reverse names for IPs)."""

    def __init__(self, port: int = 0, *, critical: bool = True) -> None:
        self.critical = critical
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.tmp = tempfile.TemporaryDirectory()
        self.default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.default.set_alpn_protocols(["acme-tls/1"])
        self.default.sni_callback = self._sni
        self._load(self.default, *alpn_certificate("default.invalid", "x"))
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _load(self, ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
        folder = Path(self.tmp.name)
        n = len(list(folder.iterdir()))
        (folder / f"{n}.crt").write_bytes(cert_pem)
        (folder / f"{n}.key").write_bytes(key_pem)
        ctx.load_cert_chain(folder / f"{n}.crt", folder / f"{n}.key")

    def add(self, name: str, token: str, key_authorization: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_alpn_protocols(["acme-tls/1"])
        self._load(ctx, *alpn_certificate(name, key_authorization, critical=self.critical))
        sni = name
        with contextlib.suppress(ValueError):
            sni = ipaddress.ip_address(name).reverse_pointer
        self.contexts[sni] = ctx

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: Any) -> None:
        ctx = self.contexts.get(name or "")
        if ctx is not None:
            sock.context = ctx

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            with self.default.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    def close(self) -> None:
        self.stopping = True
        self.sock.close()
        self.tmp.cleanup()


@contextlib.contextmanager
def responders() -> Iterator[tuple[Http01Responder, TlsAlpn01Responder]]:
    http01, alpn = Http01Responder(), TlsAlpn01Responder()
    try:
        yield http01, alpn
    finally:
        http01.close()
        alpn.close()
