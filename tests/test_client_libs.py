"""Our SSLContexts in httpx, requests/urllib3 and aiohttp: real handshakes with the Go seed server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from mtlskit import client_context
from mtlskit.client import get, request, requests_session, ssl_context
from mtlskit.errors import ConfigError
from tests.support.client import (
    OtherPKI,
)

HELLO = "hello world \n"

pytestmark = pytest.mark.interop


@pytest.fixture(params=["seed_certs_p256", "seed_certs_openssl"])
def certs(request: pytest.FixtureRequest) -> Path:
    folder: Path = request.getfixturevalue(request.param)
    return folder


def test_python_api_get(certs: Path, seed_server: Callable[[Path], str]) -> None:
    url = seed_server(certs)
    r = get(url, certs=certs)
    assert (r.status, r.text, r.ok) == (200, HELLO, True)
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.peer is not None
    assert r.peer.subject.endswith("CN=localhost")
    assert "IP:127.0.0.1" in r.peer.sans
    assert r.tls_version in ("TLSv1.2", "TLSv1.3")
    # request() takes a ready context, and keeps it usable for the next call.
    ctx = ssl_context(certs)
    for method in ("GET", "POST", "DELETE"):
        assert request(method, url, context=ctx, data=b"x").text == HELLO


def test_httpx_with_a_context(certs: Path, seed_server: Callable[[Path], str]) -> None:
    import httpx

    url = seed_server(certs)
    ctx = client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    with httpx.Client(verify=ctx) as http:
        r = http.get(url)
        assert (r.status_code, r.text) == (200, HELLO)
        assert http.get(url).text == HELLO  # the same pooled connection
    assert httpx.get(url, verify=ssl_context(certs)).text == HELLO


def test_httpx_pitfall_cert_dropped_when_verify_is_a_path(
    seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    """Why we pass a context: httpx 0.28 returns early for verify=<path> and never loads cert=."""
    import httpx

    certs = seed_certs_p256
    url = seed_server(certs)
    if tuple(int(x) for x in httpx.__version__.split(".")[:2]) < (0, 28):
        pytest.skip("older httpx still honours cert= with verify=<path>")
    with pytest.warns(DeprecationWarning):
        pitfall = httpx.Client(
            verify=str(certs / "ca.crt"),
            cert=(str(certs / "client.crt"), str(certs / "client.key")),
        )
    # The server sees no client certificate and refuses the connection.
    with pitfall, pytest.raises(httpx.TransportError):
        pitfall.get(url)
    # The fix: one context with both trust and the client certificate.
    with httpx.Client(verify=ssl_context(certs)) as http:
        assert http.get(url).text == HELLO


def test_requests_session(certs: Path, seed_server: Callable[[Path], str]) -> None:
    url = seed_server(certs)
    ctx = ssl_context(certs)
    with requests_session(ctx) as session:
        r = session.get(url, timeout=10)
        assert (r.status_code, r.text) == (200, HELLO)
        assert session.post(url, data=b"x", timeout=10).text == HELLO
    # requests would have loaded certifi's public roots into our context: it still trusts one CA.
    assert len(ctx.get_ca_certs()) == 1
    with requests_session(certs=certs) as session:
        assert session.get(url, timeout=10).text == HELLO


def test_plain_adapter_would_add_public_roots(
    seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    """The pitfall MtlsAdapter avoids: a naive ssl_context adapter widens the trust."""
    import requests
    from requests.adapters import HTTPAdapter

    class NaiveAdapter(HTTPAdapter):
        def __init__(self, ctx: ssl.SSLContext) -> None:
            self.ctx = ctx
            super().__init__()

        def init_poolmanager(self, *args: object, **kwargs: object) -> None:
            kwargs["ssl_context"] = self.ctx
            super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]

    url = seed_server(seed_certs_p256)
    ctx = ssl_context(seed_certs_p256)
    with requests.Session() as session:
        session.mount("https://", NaiveAdapter(ctx))
        assert session.get(url, timeout=10).text == HELLO
    assert len(ctx.get_ca_certs()) > 1  # certifi's bundle is now trusted as well


def test_mtls_adapter_refuses_verify_false_and_cert(
    seed_certs_p256: Path, seed_server: Callable[[Path], str]
) -> None:
    import requests

    from mtlskit.client import MtlsAdapter

    url = seed_server(seed_certs_p256)
    with requests.Session() as session:
        session.mount("https://", MtlsAdapter(ssl_context(seed_certs_p256)))
        with pytest.raises(ConfigError, match="takes trust and the client certificate"):
            session.get(url, verify=False)
        with pytest.raises(ConfigError):
            session.get(url, cert=str(seed_certs_p256 / "client.crt"))
        assert session.get(url, timeout=10).text == HELLO
        # A CA bundle path (verify=, REQUESTS_CA_BUNDLE) never widens the context's trust.
        public = "/etc/ssl/certs/ca-certificates.crt"
        assert session.get(url, verify=public, timeout=10).text == HELLO
        ctx = session.get_adapter(url).ssl_context  # type: ignore[attr-defined]
        assert len(ctx.get_ca_certs()) == 1


def test_requests_refused_without_our_ca(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    import requests

    url = seed_server(seed_certs_p256)
    with (
        requests_session(ssl_context(seed_certs_p256, ca=other_pki.ca)) as session,
        pytest.raises(requests.exceptions.SSLError),
    ):
        session.get(url, timeout=10)


def test_aiohttp(certs: Path, seed_server: Callable[[Path], str]) -> None:
    import aiohttp

    url = seed_server(certs)
    ctx = ssl_context(certs)

    async def main() -> list[str]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            out = []
            for _ in range(2):
                async with session.get(url) as r:
                    assert r.status == 200
                    out.append(await r.text())
            # ssl= per request works too.
            async with session.get(url, ssl=ctx) as r:
                out.append(await r.text())
            return out

    assert asyncio.run(main()) == [HELLO] * 3


def test_aiohttp_refused_client_cert(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    import aiohttp

    url = seed_server(seed_certs_p256)
    ctx = ssl_context(seed_certs_p256, cert=other_pki.client_cert, key=other_pki.client_key)

    async def main() -> None:
        async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as r:
            await r.text()

    with pytest.raises(aiohttp.ClientError):
        asyncio.run(main())
