"""Enrollment with a one-time token, and renewal over mTLS.

::

    POST /enroll/info  {"token"}          -> {"name", "sans", "profile", "expires_at"}
    POST /enroll       {"token", "csr"}   -> {"certificate", "ca", "serial", "profile", …}
    POST /renew        {"csr"} with the current certificate as TLS client certificate
                                          -> the same, same identity and profile

Enrollment: the CSR may leave its subject and SANs empty (the token decides), or
ask for CN=<the token's name> and a subset of its SANs; anything more is refused
and the token stays unused. Renewal: the client certificate must be unexpired
(the handshake checks), issued by this CA, in the inventory and not revoked, and
the CSR must carry a new key; the new certificate keeps subject, SANs and profile.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mtlskit.database import Transaction
from mtlskit.errors import MtlsError, PKIError, RefusedError
from mtlskit.pki.ca import cert_pem
from mtlskit.pki.inventory import format_time, issued_by, serial_hex
from mtlskit.pki.keys import public_key_der
from mtlskit.pki.names import format_san, parse_sans
from mtlskit.service import tokens
from mtlskit.service.issuance import (
    check_csr,
    counted,
    issue_from_csr,
    load_request_csr,
    requested_sans,
)
from mtlskit.service.state import ServiceState

__all__ = ["enroll_with_token", "renew_with_certificate", "routes"]

log = logging.getLogger("mtlskit.service")
T = TypeVar("T")


def _names(values: list[str] | tuple[str, ...]) -> list[str]:
    return [format_san(n) for n in parse_sans(values)]


async def _json_body(request: Request, *fields: str) -> dict[str, str]:
    body = await request.body()
    try:
        data = json.loads(body)
    except ValueError:
        raise RefusedError("malformed request: the body is not JSON") from None
    if not isinstance(data, dict):
        raise RefusedError("malformed request: the body must be a JSON object")
    out: dict[str, str] = {}
    for name in fields:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise RefusedError(f"malformed request: {name!r} is missing or not a string")
        out[name] = value
    return out


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _answer(
    state: ServiceState, leaf: x509.Certificate, chain: bytes, serial: str, profile: str
) -> dict[str, Any]:
    return {
        "certificate": chain.decode("ascii"),
        "ca": state.roots_pem.decode("ascii"),
        "serial": serial,
        "profile": profile,
        "not_after": format_time(leaf.not_valid_after_utc),
    }


def _check_subject(csr: x509.CertificateSigningRequest, allowed: x509.Name, what: str) -> None:
    if len(csr.subject) and csr.subject != allowed:
        raise RefusedError(
            f"the CSR asks for subject {csr.subject.rfc4514_string()}; {what} allows "
            f"{allowed.rfc4514_string() or 'an empty subject'}",
            status=403,
            hint="leave the CSR's subject empty, or ask for exactly that",
        )


def _check_sans(csr: x509.CertificateSigningRequest, allowed: list[str], what: str) -> None:
    asked = requested_sans(csr)
    try:
        asked = _names(asked)
    except Exception:
        raise RefusedError(f"the CSR asks for SANs that cannot be issued: {asked}") from None
    extra = [n for n in asked if n not in allowed]
    if extra:
        raise RefusedError(
            f"the CSR asks for {', '.join(extra)}, which {what} does not allow "
            f"(allowed: {', '.join(allowed) or 'none'})",
            status=403,
            hint="ask for no SANs (the CA fills them in) or only allowed ones",
        )


# -- enrollment --------------------------------------------------------------------------


def _rate_counted(
    state: ServiceState,
    keys: tuple[str, ...],
    work: Callable[[Transaction], T],
    *,
    durable: bool = True,
) -> T:
    """``work(tx)`` in one transaction that also counts the request against the rate
    limits (429 beyond: everything rolls back). A refusal from ``work`` rolls the count
    back too: it is then made again on its own, so refused guesses add up like any
    request, while a request that succeeds pays for one transaction.

    The count comes last, just before the commit: every request from one address
    updates the same row, which PostgreSQL keeps locked until the commit; counted
    first, enrollments from one address ran one at a time, signing included (at half
    the rate on PostgreSQL, measured)."""
    try:
        with state.db.transaction(durable=durable) as tx:
            result = work(tx)
            state.check_rate(*keys, tx=tx)
            return result
    except RefusedError as exc:
        if exc.status != 429:
            with contextlib.suppress(MtlsError):  # past the limit, or the DB: the refusal
                state.check_rate(*keys)
        raise


def _keys(token: str, address: str) -> tuple[str, ...]:
    return f"addr:{address}", f"token:{tokens.token_hash(token)[:16]}"


def token_info(state: ServiceState, token: str, address: str) -> dict[str, object]:
    """What a token allows, without spending it (``mtlskit enroll`` names its files)."""

    def look(tx: Transaction) -> tokens.Token:
        record = tokens.find_token(tx, token, now=state.now())
        if record.used_at is not None:
            raise tokens.refuse_used(record)
        return record

    # Reads only (and counts): nothing to keep through a power cut.
    return _rate_counted(state, _keys(token, address), look, durable=False).as_json()


def enroll_with_token(
    state: ServiceState, token: str, csr_pem: str, address: str
) -> dict[str, Any]:
    """In ONE transaction: count the request against the rate limits, check the CSR and
    the token, record the certificate and spend the token. Nothing is issued on refusal,
    and a token is spent exactly when its certificate is in the inventory.

    The same request again (the token, a CSR for the same key) answers the same
    certificate: an answer lost on the way (the connection, or the replica, died after
    the commit) is fetched again, from any replica. Another key gets "already used".
    """
    with counted(state, "enroll"):
        return _rate_counted(
            state, _keys(token, address), lambda tx: _enroll(state, tx, token, csr_pem, address)
        )


def _enroll(
    state: ServiceState,
    tx: Transaction,
    token: str,
    csr_pem: str,
    address: str,
) -> dict[str, Any]:
    checked = check_csr(load_request_csr(csr_pem))
    csr = checked.csr
    now = state.now()
    record = tokens.find_token(tx, token, now=now)
    if record.used_at is not None:
        return _answer_again(state, tx, record, csr)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, record.name)])
    _check_subject(csr, subject, "the token")
    allowed = list(record.sans)
    _check_sans(csr, allowed, "the token")
    names = _names(requested_sans(csr)) or allowed
    issued = issue_from_csr(
        state,
        checked,
        names=names,
        profile=record.profile,
        subject=subject,
        route="enroll",
        requester=f"token:{record.id}",
        address=address,
        tx=tx,
    )
    # After signing: of two requests racing for one token, the loser's certificate
    # goes with its rolled-back transaction.
    tokens.spend(tx, record, issued.serial, now=now)
    return _answer(state, issued.certificate, issued.chain_pem, issued.serial, record.profile)


def _answer_again(
    state: ServiceState, tx: Transaction, record: tokens.Token, csr: x509.CertificateSigningRequest
) -> dict[str, Any]:
    """The certificate a spent token got, for a request with the same key; else 403."""
    try:
        issued = state.inventory().get(record.serial, tx=tx) if record.serial else None
    except PKIError:
        issued = None
    if issued is None or issued.pem is None or issued.status != "valid":
        raise tokens.refuse_used(record)
    cert = issued.certificate
    if public_key_der(cert.public_key()) != public_key_der(csr.public_key()):  # type: ignore[arg-type]
        raise tokens.refuse_used(record)
    log.info(
        "enroll: token %s answered again with certificate %s (same key)", record.id, issued.serial
    )
    state.metrics.count_issuance("enroll", "repeated")
    chain = b"".join(cert_pem(c) for c in (cert, *state.ca.leaf_chain))
    return _answer(state, cert, chain, issued.serial, record.profile)


# -- renewal -----------------------------------------------------------------------------


def _client_certificate(request: Request) -> x509.Certificate:
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        raise RefusedError(
            "renewal needs the current certificate as the TLS client certificate",
            status=401,
            hint="connect with --cert/--key of the certificate to renew",
        )
    return x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))


def renew_with_certificate(
    state: ServiceState, current: x509.Certificate, csr_pem: str, address: str
) -> dict[str, Any]:
    """A certificate like ``current`` (verified in the handshake) for the CSR's new key,
    in one transaction (rate count, the current certificate's record, the new one)."""
    serial = serial_hex(current.serial_number)
    with counted(state, "renew"):
        return _rate_counted(
            state,
            (f"addr:{address}", f"cert:{serial}"),
            lambda tx: _renew(state, tx, current, csr_pem, address),
        )


def _renew(
    state: ServiceState, tx: Transaction, current: x509.Certificate, csr_pem: str, address: str
) -> dict[str, Any]:
    serial = serial_hex(current.serial_number)
    if not issued_by(current, state.ca.certificate):
        raise RefusedError(
            "the client certificate was not issued by this CA", status=403, hint="enroll first"
        )
    record = state.inventory().find(current, tx=tx)
    if record is None:
        raise RefusedError(
            f"certificate {serial} is not in this CA's inventory",
            status=403,
            hint="enroll again",
        )
    if record.status == "revoked":
        raise RefusedError(
            f"certificate {serial} is revoked", status=403, hint="enroll again with a new token"
        )
    if record.profile not in ("server", "client", "server-client"):
        raise RefusedError(f"a {record.profile} certificate cannot be renewed here", status=403)
    if state.now() >= current.not_valid_after_utc:
        raise RefusedError(f"certificate {serial} has expired", status=403, hint="enroll again")
    checked = check_csr(load_request_csr(csr_pem))
    csr = checked.csr
    if public_key_der(csr.public_key()) == public_key_der(current.public_key()):  # type: ignore[arg-type]
        raise RefusedError(
            "the CSR carries the current certificate's key; renewal needs a new key",
            status=403,
            hint="make a new key for each renewal (mtlskit agent does)",
        )
    _check_subject(csr, current.subject, "the current certificate")
    names = list(record.sans)
    _check_sans(csr, names, "the current certificate")
    issued = issue_from_csr(
        state,
        checked,
        names=names,
        profile=record.profile,
        subject=current.subject,
        route="renew",
        requester=f"cert:{serial}",
        address=address,
        renewed_from=serial,
        tx=tx,
    )
    return _answer(state, issued.certificate, issued.chain_pem, issued.serial, record.profile)


def routes(state: ServiceState) -> list[BaseRoute]:
    async def info(request: Request) -> Response:
        data = await _json_body(request, "token")
        out = await state.blocking(token_info, state, data["token"], _address(request))
        return JSONResponse(out)

    async def enroll(request: Request) -> Response:
        data = await _json_body(request, "token", "csr")
        out = await state.blocking(
            enroll_with_token, state, data["token"], data["csr"], _address(request)
        )
        return JSONResponse(out, status_code=201)

    async def renew(request: Request) -> Response:
        current = _client_certificate(request)
        data = await _json_body(request, "csr")
        out = await state.blocking(
            renew_with_certificate, state, current, data["csr"], _address(request)
        )
        return JSONResponse(out, status_code=201)

    return [
        Route("/enroll/info", info, methods=["POST"]),
        Route("/enroll", enroll, methods=["POST"]),
        Route("/renew", renew, methods=["POST"]),
    ]
