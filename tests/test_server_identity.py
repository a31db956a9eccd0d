"""PeerIdentity from real certificates, and --allow-cn/--allow-san matching."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mtlskit.errors import ConfigError
from mtlskit.identity import AccessPolicy, PeerIdentity
from mtlskit.pki.ca import CA


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ident() -> PeerIdentity:
    ca = CA.create("/CN=Id CA", key_type="p256", days=10)
    leaf = ca.issue(
        "client",
        "/C=TH/O=Dev/CN=svc-a",
        sans=[
            "DNS:A.Example.org",
            "URI:spiffe://example.org/ns/prod/sa/a",
            "email:Ops@Example.org",
        ],
        key_type="p256",
    )
    return PeerIdentity.from_der(_der(leaf.cert_pem))


def test_identity_fields(ident: PeerIdentity) -> None:
    assert ident.subject == "CN=svc-a,O=Dev,C=TH"
    assert ident.common_name == "svc-a"
    assert ident.sans_of("URI") == ["spiffe://example.org/ns/prod/sa/a"]
    assert len(ident.fingerprint_sha256) == 64 and ident.serial_number > 0
    assert ident.not_valid_after.tzinfo is not None
    assert ident.describe() == (
        "CN=svc-a SAN=DNS:a.example.org,URI:spiffe://example.org/ns/prod/sa/a,email:Ops@example.org"
    )


def test_identity_of_the_seeds_v1_client_certificate(seed_certs_openssl: Path) -> None:
    ident = PeerIdentity.from_der(_der((seed_certs_openssl / "client.crt").read_bytes()))
    assert ident.subject == "CN=client,O=Dev,ST=RB,C=TH"
    assert ident.subject_alternative_names == ()
    assert ident.describe() == "CN=client"


@pytest.mark.parametrize(
    ("cn", "san", "allowed"),
    [
        ((), (), True),  # no rule: everyone the CA verified
        (("svc-*",), (), True),
        (("svc-b",), (), False),
        (("SVC-A",), (), False),  # CN compares exactly
        ((), ("DNS:*.example.org",), True),  # DNS case-insensitive
        ((), ("dns:a.example.ORG",), True),
        ((), ("DNS:*.example.com",), False),
        ((), ("URI:spiffe://example.org/ns/prod/*",), True),
        ((), ("URI:spiffe://example.org/ns/dev/*",), False),
        ((), ("URI:SPIFFE://example.org/*",), False),  # URIs compare exactly
        ((), ("email:*@example.org",), True),
        ((), ("spiffe://example.org/*",), True),  # no type: any of DNS/URI/email
        ((), ("a.example.org",), True),
        (("nobody",), ("DNS:nothing",), False),
        (("nobody",), ("DNS:nothing", "email:ops@*"), True),  # any rule may allow
    ],
)
def test_allow_rules(
    ident: PeerIdentity, cn: tuple[str, ...], san: tuple[str, ...], allowed: bool
) -> None:
    assert AccessPolicy(cn, san).allows(ident) is allowed


@pytest.mark.parametrize("bad", ["IP:10.0.0.*", "DirName:CN=x", ""])
def test_bad_san_rules(bad: str) -> None:
    with pytest.raises(ConfigError):
        AccessPolicy((), (bad,))
