"""ACME errors as RFC 7807 problem documents (RFC 8555 section 6.7).

Every refusal inside the ACME routes is an :class:`AcmeProblem`; the route
wrapper turns it into ``application/problem+json`` with the status, the
``Retry-After`` header where one applies, and a fresh ``Replay-Nonce``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NS", "AcmeProblem"]

NS = "urn:ietf:params:acme:error:"

# The HTTP status each ACME error type is answered with unless said otherwise.
_STATUS = {
    "accountDoesNotExist": 400,
    "alreadyRevoked": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 401,
    "incorrectResponse": 400,
    "invalidContact": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
}


class AcmeProblem(Exception):
    """A request refused with an ACME error type, e.g. ``AcmeProblem("badNonce", "…")``."""

    def __init__(
        self,
        type: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        subproblems: list[AcmeProblem] | None = None,
        identifier: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        nonce: str | None = None,
    ) -> None:
        super().__init__(detail)
        if type not in _STATUS:
            raise ValueError(f"unknown ACME error type {type!r}")
        self.type = type
        self.detail = detail
        self.status = status if status is not None else _STATUS[type]
        self.retry_after = retry_after
        self.subproblems = subproblems or []
        self.identifier = identifier
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        # The Replay-Nonce of the reply, when the refused request already minted one.
        self.nonce = nonce

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": NS + self.type, "detail": self.detail}
        if self.status:
            doc["status"] = self.status
        if self.identifier is not None:
            doc["identifier"] = self.identifier
        if self.subproblems:
            doc["subproblems"] = [p.to_json() for p in self.subproblems]
        doc.update(self.extra)
        return doc

    def response_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        return out
