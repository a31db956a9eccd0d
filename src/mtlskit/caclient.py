"""Talking to a CA service (``mtlskit ca serve``): bootstrap trust, enroll, renew.

::

    root = bootstrap("https://ca:9443", fingerprint="3a7f…", folder="certs")  # writes ca.crt
    paths = enroll("https://ca:9443", token, folder="certs")                 # key made here
    chain = renew("https://ca:9443", cert="certs/client.crt", key="certs/client.key",
                  ca="certs/ca.crt", new_key=generate_key("p256"))

Trust: the first contact fetches ``/roots.pem`` without verifying the server and
accepts it only when its SHA-256 equals the fingerprint the user was given (out
of band, as ``step ca bootstrap`` does), then checks that the server's own
certificate chains to that root. Every later request verifies the server against
``ca.crt``. Nothing is ever trusted on first use silently.

Requests go through :func:`mtlskit.client.request` (the one HTTP client path) over
an :class:`ssl.SSLContext` from :mod:`mtlskit.tls`: one JSON request per connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.client import Response
from mtlskit.client import request as client_request
from mtlskit.errors import ConfigError, PKIError, RefusedError, VerificationError
from mtlskit.tls import client_context, pinning_context

__all__ = [
    "bootstrap",
    "check_fingerprint",
    "fetch_roots",
    "normalize_fingerprint",
    "request",
]

TIMEOUT = 30.0

PathLike = str | os.PathLike[str]


def _json(resp: Response) -> dict[str, object]:
    try:
        value = json.loads(resp.body)
    except ValueError:
        raise RefusedError(
            f"the CA service answered {resp.status} with something that is not JSON",
            status=resp.status,
        ) from None
    if not isinstance(value, dict):
        raise RefusedError("the CA service answered with unexpected JSON", status=resp.status)
    return value


def _base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{url!r} is not an https:// URL", hint="e.g. https://ca.internal:9443")
    try:
        parts.port  # noqa: B018 - a bad port raises here, with the URL in the message
    except ValueError:
        raise ConfigError(f"{url!r} has a bad port") from None
    return url.rstrip("/")


def request(
    url: str,
    path: str,
    context: ssl.SSLContext,
    *,
    method: str = "GET",
    body: object | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    """One HTTPS request to the CA service at ``url``, through :func:`mtlskit.client.request`
    (the one client path): a failure to get an answer is one error of the client's tree
    (:class:`~mtlskit.errors.NetworkError`, :class:`~mtlskit.errors.HandshakeError`, …)."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return client_request(
        method, _base(url) + path, context=context, headers=headers, data=data, timeout=timeout
    )


def raise_for_status(resp: Response, what: str) -> None:
    """A service error as one :class:`~mtlskit.errors.RefusedError` with its message."""
    if resp.status < 400:
        return
    try:
        message = str(json.loads(resp.body).get("error") or "")
    except (ValueError, AttributeError):
        message = ""
    retry = resp.header("retry-after")
    retry_after = int(retry) if retry and retry.isdigit() else None
    text = message or resp.body[:200].decode("utf-8", "replace").strip() or "no details"
    raise RefusedError(
        f"{what} refused ({resp.status}): {text}", status=resp.status, retry_after=retry_after
    )


def normalize_fingerprint(text: str) -> str:
    """``3A:7F:…`` or ``3a7f…`` → ``3a7f…`` (64 hex digits); refuse anything else."""
    value = text.strip().lower().replace(":", "").removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(
            f"{text!r} is not a SHA-256 fingerprint",
            hint="copy the 64 hex digits that mtlskit ca fingerprint printed",
        )
    return value


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_fingerprint(roots_pem: bytes, fingerprint: str, *, source: str) -> x509.Certificate:
    """The root in ``roots_pem`` when its SHA-256 is ``fingerprint``; else refuse."""
    from mtlskit.pki.load import load_certificates

    wanted = normalize_fingerprint(fingerprint)
    certs = load_certificates(roots_pem, file=source)
    root = certs[0]
    got = _fingerprint(root)
    if got != wanted:
        raise VerificationError(
            f"the root from {source} has SHA-256 {got}, not the fingerprint given ({wanted})",
            hint="check the URL and the fingerprint; never continue with a root you cannot match",
        )
    if root.subject != root.issuer:
        raise PKIError(f"{source} did not send a self-signed root", hint="check the URL")
    return root


def fetch_roots(url: str, fingerprint: str, *, timeout: float = TIMEOUT) -> bytes:
    """``/roots.pem`` of the service, accepted only with the right fingerprint, and only
    when the service's own certificate chains to it. The PEM of the root."""
    resp = request(url, "/roots.pem", pinning_context(), timeout=timeout)
    raise_for_status(resp, "GET /roots.pem")
    root = check_fingerprint(resp.body, fingerprint, source=url.rstrip("/") + "/roots.pem")
    pem = root.public_bytes(serialization.Encoding.PEM)
    # Now the other way round: the server must hold a certificate from this root.
    verified = client_context(pem)
    try:
        raise_for_status(request(url, "/healthz", verified, timeout=timeout), "GET /healthz")
    except RefusedError as exc:
        if exc.status != 503:  # a database outage does not make the root wrong
            raise
    return pem


def bootstrap(
    url: str,
    fingerprint: str,
    folder: PathLike,
    *,
    force: bool = False,
    timeout: float = TIMEOUT,
) -> Path:
    """Fetch and pin the root of the service at ``url``; write ``FOLDER/ca.crt``.

    An existing ca.crt with the same root is left as it is; a different one is
    refused unless ``force``.
    """
    from mtlskit.pki.store import CERT_MODE, write_atomic

    pem = fetch_roots(url, fingerprint, timeout=timeout)
    path = Path(folder) / "ca.crt"
    if path.exists():
        try:
            current = path.read_bytes()
        except OSError as exc:
            raise PKIError(f"cannot read: {exc.strerror}", file=path) from None
        if current == pem:
            return path
        if not force:
            raise PKIError(
                "ca.crt exists with another root",
                file=path,
                hint="pass --force to replace it, or use another --dir",
            )
    return write_atomic(path, pem, CERT_MODE)


# -- enrollment and renewal ------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate the service issued: the chain PEM (leaf first) and what it is."""

    chain_pem: bytes
    ca_pem: bytes
    serial: str
    profile: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)


def _issued(resp: Response, what: str) -> Issued:
    raise_for_status(resp, what)
    data = _json(resp)
    try:
        chain = str(data["certificate"]).encode("ascii")
        ca = str(data["ca"]).encode("ascii")
        x509.load_pem_x509_certificates(chain)
        return Issued(chain, ca, str(data["serial"]), str(data["profile"]))
    except (KeyError, ValueError, UnicodeEncodeError):
        raise RefusedError(
            f"{what}: the CA service answered without a usable certificate", status=resp.status
        ) from None


def token_info(url: str, token: str, context: ssl.SSLContext) -> dict[str, object]:
    """What ``token`` allows (name, sans, profile, expires_at), without spending it."""
    resp = request(url, "/enroll/info", context, method="POST", body={"token": token})
    raise_for_status(resp, "enrollment")
    return _json(resp)


def enroll_csr(url: str, token: str, csr_pem: bytes, context: ssl.SSLContext) -> Issued:
    """Spend ``token`` on a certificate for the CSR's key."""
    body = {"token": token, "csr": csr_pem.decode("ascii")}
    return _issued(request(url, "/enroll", context, method="POST", body=body), "enrollment")


def renew_csr(url: str, csr_pem: bytes, context: ssl.SSLContext) -> Issued:
    """A certificate with the identity of ``context``'s client certificate, for the CSR's
    (new) key; ``context`` must present the current certificate and key."""
    body = {"csr": csr_pem.decode("ascii")}
    return _issued(request(url, "/renew", context, method="POST", body=body), "renewal")


def trust_for(url: str, folder: PathLike, fingerprint: str | None) -> Path:
    """``FOLDER/ca.crt`` to verify the service with: bootstrapped first with
    ``fingerprint`` when given (and checked against an existing ca.crt), else the one
    that is there. No ca.crt and no fingerprint: refused (never trust on first use)."""
    path = Path(folder) / "ca.crt"
    if fingerprint is not None:
        return bootstrap(url, fingerprint, folder)
    if not path.exists():
        raise ConfigError(
            f"no {path} to verify the CA service with",
            hint="pass --fingerprint (from mtlskit ca fingerprint on the CA), or run "
            "mtlskit ca bootstrap URL --fingerprint FP first",
        )
    return path


def seed_name(profile: str) -> str:
    """The seed's file name for a profile: client.crt, or server.crt for servers."""
    return "client" if profile == "client" else "server"


def enroll(
    url: str,
    token: str,
    folder: PathLike,
    *,
    key_type: str = "p256",
    name: str | None = None,
    fingerprint: str | None = None,
    force: bool = False,
) -> tuple[list[Path], Issued]:
    """Enroll with a one-time token: make the key here, send a CSR, write NAME.key (0600),
    NAME.crt (the chain) and ca.crt in ``folder``; the written paths and what was issued.

    NAME defaults to the seed's name for the token's profile (client, or server), so
    ``mtlskit serve``/``mtlskit get`` use the result as it is. Existing files are
    refused before the token is spent, unless ``force``.
    """
    from mtlskit.pki.ca import create_csr, csr_pem
    from mtlskit.pki.keys import generate_key, private_key_pem
    from mtlskit.pki.store import CERT_MODE, KEY_MODE, SeedLayout, write_many

    ca_file = trust_for(url, folder, fingerprint)
    context = client_context(ca_file)
    info = token_info(url, token, context)
    profile = str(info.get("profile", "client"))
    base = name or seed_name(profile)
    layout = SeedLayout(Path(folder))
    if not force:
        for path in (layout.key(base), layout.cert(base)):
            if path.exists():
                from mtlskit.errors import AlreadyExistsError

                raise AlreadyExistsError(
                    "file exists; the token was not used",
                    file=path,
                    hint="pass --force to replace it, or --name for other files",
                )
    key = generate_key(key_type)
    # Ask for exactly what the token allows (the service would fill in the same).
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, str(info.get("name", "")))])
    sans = info.get("sans")
    csr = create_csr(key, subject, [str(s) for s in sans] if isinstance(sans, list) else [])
    issued = enroll_csr(url, token, csr_pem(csr), context)
    leaf = issued.certificate
    from mtlskit.pki.keys import key_matches

    if not key_matches(key, leaf.public_key()):
        raise PKIError("the CA service returned a certificate for another key")
    paths = write_many(
        [
            (layout.key(base), private_key_pem(key), KEY_MODE),
            (layout.cert(base), issued.chain_pem, CERT_MODE),
        ],
        force=True,
    )
    return paths, issued
