"""JWS for ACME (RFC 8555 section 6.2), parsed and verified by josepy.

josepy does the JOSE work (flattened JSON serialization, JWK parsing,
signature checks, RFC 7638 thumbprints). ACME adds three protected header
fields (``nonce``, ``url``, and ``kid`` as an account URL), declared here the
way josepy's docs ask for extensions: by subclassing its ``Header``, as the
``acme`` package does (``acme/jws.py``).

josepy 2.x has no Ed25519 keys; RFC 8037's ``OKP`` key type and ``EdDSA``
algorithm are plugged into josepy's own registries (``JWK.register``,
``JWASignature.register``) so that parsing and verification stay josepy's.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from josepy.errors import DeserializationError
from josepy.errors import Error as JoseError
from josepy.json_util import decode_b64jose, encode_b64jose
from josepy.json_util import field as jose_field
from josepy.jwa import JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA, JWKOct
from josepy.jws import JWS as JoseJWS
from josepy.jws import Header as JoseHeader
from josepy.jws import Signature as JoseSignature
from josepy.util import ComparableKey

from mtlskit.service.acme.problems import AcmeProblem

__all__ = [
    "ALGORITHMS",
    "EAB_ALGORITHMS",
    "AcmeJWS",
    "SignedRequest",
    "check_key",
    "jwk_from_json",
    "jwk_json",
    "key_authorization",
    "parse_jws",
    "thumbprint",
    "verify",
]

# RFC 8555 section 6.2: ES256 and EdDSA are the ones a server SHOULD accept; RS256
# because certbot (and many others) sign with RSA account keys.
ALGORITHMS: tuple[str, ...] = ("ES256", "ES384", "RS256", "EdDSA")
EAB_ALGORITHMS: tuple[str, ...] = ("HS256", "HS384", "HS512")
MIN_RSA_BITS = 2048
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_CURVE_OF_ALG = {"ES256": "secp256r1", "ES384": "secp384r1"}


# -- RFC 8037: Ed25519 keys and EdDSA, plugged into josepy ---------------------------------


@JWK.register
class JWKOKP(JWK):
    """An Octet Key Pair JWK (RFC 8037), Ed25519 only."""

    typ = "OKP"
    __slots__ = ("key",)
    cryptography_key_types = (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)
    required = ("crv", JWK.type_field_name, "x")
    key: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "key" in kwargs and not isinstance(kwargs["key"], ComparableKey):
            kwargs["key"] = ComparableKey(kwargs["key"])
        super().__init__(*args, **kwargs)

    def fields_to_partial_json(self) -> dict[str, Any]:
        public = self.key.public_key() if hasattr(self.key, "private_bytes") else self.key
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "x": encode_b64jose(raw)}

    @classmethod
    def fields_from_json(cls, jobj: Mapping[str, Any]) -> JWKOKP:
        if jobj.get("crv") != "Ed25519":
            raise DeserializationError("only the Ed25519 curve is supported")
        if "d" in jobj:
            raise DeserializationError("a private OKP key is not accepted here")
        raw = decode_b64jose(jobj["x"], size=32)
        return cls(key=ed25519.Ed25519PublicKey.from_public_bytes(raw))

    def public_key(self) -> JWKOKP:
        key = self.key.public_key() if hasattr(self.key, "private_bytes") else self.key
        return type(self)(key=key)


class _EdDSA(JWASignature):
    kty = JWKOKP

    def sign(self, key: Any, msg: bytes) -> bytes:
        return bytes(key.sign(msg))

    def verify(self, key: Any, msg: bytes, sig: bytes) -> bool:
        try:
            key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


EdDSA = JWASignature.register(_EdDSA("EdDSA"))


# -- ACME's header fields ------------------------------------------------------------------


class AcmeHeader(JoseHeader):
    """The JOSE header with ACME's ``nonce`` and ``url`` (``kid`` is josepy's)."""

    nonce: str | None = jose_field("nonce", omitempty=True)
    url: str | None = jose_field("url", omitempty=True)


class AcmeSignature(JoseSignature):
    __slots__ = JoseSignature._orig_slots
    header_cls = AcmeHeader
    header: AcmeHeader = jose_field(
        "header", omitempty=True, default=AcmeHeader(), decoder=AcmeHeader.from_json
    )


class AcmeJWS(JoseJWS):
    __slots__ = JoseJWS._orig_slots
    signature_cls = AcmeSignature


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    """A parsed (not yet verified) ACME request: its protected header and payload."""

    jws: AcmeJWS
    alg: str
    nonce: str | None
    url: str | None
    kid: str | None
    jwk: JWK | None
    payload: bytes

    @property
    def is_post_as_get(self) -> bool:
        return self.payload == b""

    def json_payload(self) -> dict[str, Any]:
        """The payload as a JSON object; ``{}`` is what a POST with no fields sends."""
        try:
            value = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AcmeProblem("malformed", f"the JWS payload is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise AcmeProblem("malformed", "the JWS payload must be a JSON object")
        return value


def _object(body: bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AcmeProblem("malformed", f"the request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AcmeProblem("malformed", "the request body must be a flattened JWS object")
    return value


def parse_jws(
    body: bytes | Mapping[str, Any], *, algorithms: tuple[str, ...] = ALGORITHMS
) -> SignedRequest:
    """Parse a flattened JWS (RFC 7515 section 7.2.2) as ACME requires it.

    Only ``protected``, ``payload`` and ``signature`` (no unprotected header, no
    second signature: RFC 8555 section 6.2), an ``alg`` from ``algorithms``, and
    either ``jwk`` or ``kid``, never both.
    """
    obj = _object(body)
    keys = set(obj)
    if keys != {"protected", "payload", "signature"}:
        extra = sorted(keys - {"protected", "payload", "signature"})
        missing = sorted({"protected", "payload", "signature"} - keys)
        what = f"unexpected {', '.join(extra)}" if extra else f"missing {', '.join(missing)}"
        raise AcmeProblem(
            "malformed",
            f"the request must be a flattened JWS with protected, payload and signature ({what})",
        )
    if not all(isinstance(obj[k], str) and _BASE64URL.fullmatch(obj[k]) for k in keys):
        raise AcmeProblem("malformed", "the JWS members must be base64url strings")
    # The algorithm first, so that an unsupported one is named as such.
    try:
        protected = json.loads(decode_b64jose(obj["protected"]))
    except (DeserializationError, ValueError, UnicodeDecodeError):
        raise AcmeProblem("malformed", "the JWS protected header is not base64url JSON") from None
    if not isinstance(protected, dict):
        raise AcmeProblem("malformed", "the JWS protected header must be a JSON object")
    alg = protected.get("alg")
    if alg not in algorithms:
        raise AcmeProblem(
            "badSignatureAlgorithm",
            f"the JWS algorithm {alg!r} is not accepted; use one of {', '.join(algorithms)}",
            extra={"algorithms": list(algorithms)},
        )
    try:
        jws = AcmeJWS.from_json(obj)
    except (DeserializationError, KeyError, TypeError, ValueError) as exc:
        raise AcmeProblem("malformed", f"the JWS cannot be parsed: {exc}") from None
    header = jws.signature.combined
    assert isinstance(jws, AcmeJWS) and isinstance(header, AcmeHeader)
    if header.jwk is not None and header.kid is not None:
        raise AcmeProblem("malformed", "the JWS header has both jwk and kid: send exactly one")
    for name in ("nonce", "url", "kid"):
        value = getattr(header, name)
        if value is not None and not isinstance(value, str):
            raise AcmeProblem("malformed", f"the JWS header's {name} must be a string")
    return SignedRequest(
        jws=jws,
        alg=str(alg),
        nonce=header.nonce,
        url=header.url,
        kid=header.kid,
        jwk=header.jwk,
        payload=jws.payload,
    )


def check_key(jwk: JWK, alg: str) -> None:
    """Refuse a key too weak for us, or one that does not go with ``alg``."""
    key = jwk.key
    if isinstance(jwk, JWKRSA):
        if alg != "RS256":
            raise AcmeProblem("badSignatureAlgorithm", f"an RSA key cannot sign with {alg}")
        if key.key_size < MIN_RSA_BITS:
            raise AcmeProblem(
                "badPublicKey",
                f"RSA account keys must have at least {MIN_RSA_BITS} bits, not {key.key_size}",
            )
    elif isinstance(jwk, JWKEC):
        curve = key.curve.name
        if _CURVE_OF_ALG.get(alg) != curve:
            raise AcmeProblem(
                "badSignatureAlgorithm",
                f"an EC key on {curve} cannot sign with {alg}",
                extra={"algorithms": list(ALGORITHMS)},
            )
    elif isinstance(jwk, JWKOKP):
        if alg != "EdDSA":
            raise AcmeProblem("badSignatureAlgorithm", f"an Ed25519 key cannot sign with {alg}")
    else:
        raise AcmeProblem("badPublicKey", f"account keys of type {jwk.typ} are not accepted")


def verify(request: SignedRequest, jwk: JWK) -> None:
    """Check the signature of ``request`` with ``jwk`` (the account's, or the one it carries)."""
    check_key(jwk, request.alg)
    try:
        good = request.jws.verify(jwk)
    except (JoseError, ValueError, TypeError) as exc:
        raise AcmeProblem("malformed", f"the JWS signature cannot be checked: {exc}") from None
    if not good:
        raise AcmeProblem("malformed", "the JWS signature does not verify")


def verify_mac(request: SignedRequest, key: bytes) -> bool:
    """Check an HMAC-signed JWS (External Account Binding) with ``key``."""
    try:
        return bool(request.jws.verify(JWKOct(key=key)))
    except (JoseError, ValueError, TypeError):
        return False


def jwk_json(jwk: JWK) -> str:
    """The public key as stored: its canonical JSON (RFC 7638 member order)."""
    return json.dumps(jwk.public_key().to_partial_json(), sort_keys=True, separators=(",", ":"))


def jwk_from_json(text: str | Mapping[str, Any]) -> JWK:
    """A JWK from its JSON; stored account keys (text) are parsed once per process."""
    if isinstance(text, str):
        return _stored_jwk(text)
    return _parse_jwk(text)


@functools.lru_cache(maxsize=4096)
def _stored_jwk(text: str) -> JWK:
    # Every signed request reads its account's key: parsing it again each time was
    # ~3 % of an ACME order. JWK objects are immutable (josepy ImmutableMap).
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise AcmeProblem("malformed", f"not a usable JWK: {exc}") from None
    return _parse_jwk(obj)


def _parse_jwk(obj: Any) -> JWK:
    try:
        key = JWK.from_json(obj)
    except (JoseError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise AcmeProblem("malformed", f"not a usable JWK: {exc}") from None
    if not isinstance(key, JWK):
        raise AcmeProblem("malformed", "not a usable JWK")
    return key


def thumbprint(jwk: JWK) -> str:
    """The RFC 7638 SHA-256 thumbprint, base64url without padding."""
    return encode_b64jose(jwk.thumbprint())


def key_authorization(token: str, account_thumbprint: str) -> str:
    """RFC 8555 section 8.1: ``token || '.' || base64url(thumbprint(accountKey))``."""
    return f"{token}.{account_thumbprint}"


def same_key(a: JWK, b: JWK) -> bool:
    return hmac.compare_digest(a.thumbprint(), b.thumbprint())


def public_key_der(jwk: JWK) -> bytes:
    """The SubjectPublicKeyInfo DER of ``jwk``, to compare with a CSR's or certificate's key."""
    return bytes(
        jwk.public_key().key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def digest_b64(data: bytes) -> str:
    return encode_b64jose(hashlib.sha256(data).digest())
