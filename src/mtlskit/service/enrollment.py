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
from typing import Any

from cryptography import x509
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mtlskit.errors import RefusedError
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


def _answer(state: ServiceState, chain: bytes, serial: str, profile: str) -> dict[str, Any]:
    leaf = x509.load_pem_x509_certificate(chain)
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


def token_info(state: ServiceState, token: str, address: str) -> dict[str, object]:
    """What a token allows, without spending it (``mtlskit enroll`` names its files)."""
    state.check_rate(f"addr:{address}", f"token:{tokens.token_hash(token)[:16]}")
    return tokens.find_token(state.db, token, now=state.now()).as_json()


def enroll_with_token(
    state: ServiceState, token: str, csr_pem: str, address: str
) -> dict[str, Any]:
    """Check the token and the CSR, spend the token, issue; nothing issued on refusal."""
    with counted(state, "enroll"):
        state.check_rate(f"addr:{address}", f"token:{tokens.token_hash(token)[:16]}")
        now = state.now()
        record = tokens.find_token(state.db, token, now=now)
        csr = load_request_csr(csr_pem)
        check_csr(csr)
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, record.name)])
        _check_subject(csr, subject, "the token")
        allowed = list(record.sans)
        _check_sans(csr, allowed, "the token")
        names = _names(requested_sans(csr)) or allowed
        tokens.spend(state.db, record, now=now)
    try:
        chain, serial = issue_from_csr(
            state,
            csr,
            names=names,
            profile=record.profile,
            subject=subject,
            route="enroll",
            requester=f"token:{record.id}",
            address=address,
        )
    except BaseException:
        # The database that failed the issuance may fail this too.
        with contextlib.suppress(Exception):
            tokens.give_back(state.db, record)
        raise
    tokens.record_serial(state.db, record, serial)
    return _answer(state, chain, serial, record.profile)


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
    """A certificate like ``current`` (verified in the handshake) for the CSR's new key."""
    with counted(state, "renew"):
        serial = serial_hex(current.serial_number)
        state.check_rate(f"addr:{address}", f"cert:{serial}")
        if not issued_by(current, state.ca.certificate):
            raise RefusedError(
                "the client certificate was not issued by this CA", status=403, hint="enroll first"
            )
        record = state.inventory().find(current)
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
        csr = load_request_csr(csr_pem)
        check_csr(csr)
        if public_key_der(csr.public_key()) == public_key_der(current.public_key()):  # type: ignore[arg-type]
            raise RefusedError(
                "the CSR carries the current certificate's key; renewal needs a new key",
                status=403,
                hint="make a new key for each renewal (mtlskit agent does)",
            )
        _check_subject(csr, current.subject, "the current certificate")
        names = list(record.sans)
        _check_sans(csr, names, "the current certificate")
    chain, new_serial = issue_from_csr(
        state,
        csr,
        names=names,
        profile=record.profile,
        subject=current.subject,
        route="renew",
        requester=f"cert:{serial}",
        address=address,
        renewed_from=serial,
    )
    return _answer(state, chain, new_serial, record.profile)


def routes(state: ServiceState) -> list[BaseRoute]:
    async def info(request: Request) -> Response:
        data = await _json_body(request, "token")
        out = await run_in_threadpool(token_info, state, data["token"], _address(request))
        return JSONResponse(out)

    async def enroll(request: Request) -> Response:
        data = await _json_body(request, "token", "csr")
        out = await run_in_threadpool(
            enroll_with_token, state, data["token"], data["csr"], _address(request)
        )
        return JSONResponse(out, status_code=201)

    async def renew(request: Request) -> Response:
        current = _client_certificate(request)
        data = await _json_body(request, "csr")
        out = await run_in_threadpool(
            renew_with_certificate, state, current, data["csr"], _address(request)
        )
        return JSONResponse(out, status_code=201)

    return [
        Route("/enroll/info", info, methods=["POST"]),
        Route("/enroll", enroll, methods=["POST"]),
        Route("/renew", renew, methods=["POST"]),
    ]
