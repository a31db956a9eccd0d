"""The ACME resources (RFC 8555 section 7): what each URL does with a verified request.

Each public method handles one resource and returns a :class:`Reply`; the route
wrapper in :mod:`mtlskit.service.acme.routes` reads the body, runs the method in the
thread pool, turns refusals into problem documents and adds a ``Replay-Nonce``.

A signed request is checked in this order (:meth:`Acme.signed`): the JWS's shape
and algorithm, its ``url`` against the URL it was sent to, ``jwk`` or ``kid`` as
the resource requires, then in one transaction the account, the signature, the
nonce (used up), the rate limit, the nonce for the reply, and the resource's work.
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from josepy.errors import DeserializationError
from josepy.json_util import decode_b64jose
from josepy.jwk import JWK

from mtlskit.database import Transaction
from mtlskit.errors import ConfigError, MtlsError, PKIError, RefusedError
from mtlskit.pki.ca import cert_pem
from mtlskit.pki.inventory import format_time, parse_time, serial_hex
from mtlskit.service.acme import jws as J
from mtlskit.service.acme.policy import (
    MAX_IDENTIFIERS,
    Identifier,
    csr_identifiers,
    parse_identifier,
    parse_policy,
)
from mtlskit.service.acme.problems import AcmeProblem
from mtlskit.service.acme.store import (
    Account,
    Authz,
    Challenge,
    Order,
    consume_nonce,
    mint_nonce,
    new_id,
)
from mtlskit.service.acme.validation import CHALLENGE_TYPES, validate
from mtlskit.service.issuance import CheckedCSR, check_csr, issue_from_csr
from mtlskit.service.state import ServiceState

__all__ = ["Acme", "Reply"]

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

log = logging.getLogger("mtlskit.service.acme")

ORDER_LIFETIME = dt.timedelta(hours=8)
# A challenge left "processing" this long (the database was down when the result
# came, or its replica died) is started again; at once when the replica that claimed
# it has stopped beating (ServiceState.replica_gone). Validation stays well under it.
STALE_PROCESSING = dt.timedelta(seconds=60)
POLL_SECONDS = 1
MAX_CONTACTS = 10
VALIDATION_THREADS = 8
# RFC 5280 reason codes a subscriber may give (RFC 8555 section 7.6).
REVOCATION_REASONS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    9: x509.ReasonFlags.privilege_withdrawn,
}


@dataclass
class Reply:
    """What a resource answers: JSON (or PEM) with headers, and the nonce minted for it."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    nonce: str | None = None
    media_type: str = "application/json"
    # A validation this request started: the route waits a moment for it (without
    # holding a thread), so a fast one is answered final and the client need not poll.
    wait: Future[Challenge | None] | None = None


@dataclass(frozen=True)
class Incoming:
    """The parts of an HTTP request a resource needs (Starlette-independent)."""

    method: str
    url: str  # as the client addressed it: https://HOST/acme/…
    path: str  # below /acme, e.g. /new-order
    params: dict[str, str]
    body: bytes
    client: str  # peer address, for per-address limits


@dataclass
class Auth:
    request: J.SignedRequest
    jwk: JWK
    account: Account | None
    nonce: str  # for the reply

    @property
    def account_id(self) -> str:
        assert self.account is not None
        return self.account.id

    @property
    def thumbprint(self) -> str:
        """The account key's RFC 7638 thumbprint (stored with the account)."""
        assert self.account is not None
        return self.account.thumbprint


def _b64decode(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _BASE64URL.fullmatch(value):
        raise AcmeProblem("malformed", f"{what} must be a base64url string")
    try:
        return decode_b64jose(value)
    except (DeserializationError, binascii.Error, ValueError):
        raise AcmeProblem("malformed", f"{what} is not base64url") from None


class Acme:
    """The ACME server of one CA service; holds the policy and the validation threads."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        config = state.config
        self.prefix = state.base_url.rstrip("/") + "/acme"
        self.policy = parse_policy(config.acme_allow)
        self.eab_keys = {kid: key for kid, key in config.acme_eab}
        self.resolve = dict(config.acme_resolve)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------

    def url(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def now(self) -> dt.datetime:
        return self.state.now().replace(microsecond=0)

    def transaction(self, *, durable: bool) -> Any:
        return self.state.db.transaction(durable=durable)

    def mint(self) -> str:
        with self.transaction(durable=False) as tx:
            return mint_nonce(tx, self.now())

    def directory(self, incoming: Incoming) -> Reply:
        meta: dict[str, Any] = {"externalAccountRequired": bool(self.eab_keys)}
        return Reply(
            body={
                "newNonce": self.url("new-nonce"),
                "newAccount": self.url("new-account"),
                "newOrder": self.url("new-order"),
                "revokeCert": self.url("revoke-cert"),
                "keyChange": self.url("key-change"),
                "meta": meta,
            },
            nonce=self.mint(),
        )

    def new_nonce(self, incoming: Incoming) -> Reply:
        # RFC 8555 7.2: 200 to HEAD, 204 to GET; never cached.
        status = 200 if incoming.method == "HEAD" else 204
        return Reply(status=status, headers={"Cache-Control": "no-store"}, nonce=self.mint())

    # -- authentication ------------------------------------------------------------------

    def _parse(self, incoming: Incoming, *, jwk: bool, kid: bool) -> J.SignedRequest:
        """The checks that need no database: shape, algorithm, url, nonce present, jwk/kid."""
        request = J.parse_jws(incoming.body)
        if request.url is None:
            raise AcmeProblem("malformed", "the JWS protected header has no url")
        expected = self.prefix + incoming.path
        if request.url not in (expected, incoming.url):
            raise AcmeProblem(
                "unauthorized",
                f"the JWS url {request.url!r} is not the URL this request was sent to ({expected})",
            )
        if request.nonce is None:
            raise AcmeProblem("badNonce", "the JWS protected header has no nonce")
        if request.jwk is not None and not jwk:
            raise AcmeProblem("malformed", "this resource needs a kid (the account URL), not a jwk")
        if request.kid is not None and not kid:
            raise AcmeProblem("malformed", "this resource needs a jwk (the account key), not a kid")
        if request.jwk is None and request.kid is None:
            raise AcmeProblem("malformed", "the JWS protected header has neither jwk nor kid")
        if request.jwk is not None:
            J.verify(request, request.jwk)
        return request

    @contextlib.contextmanager
    def signed(
        self, incoming: Incoming, *, jwk: bool = False, kid: bool = True, durable: bool = False
    ) -> Iterator[tuple[Auth, Transaction]]:
        """Authenticate a signed POST, then run the resource's work in the same transaction.

        One transaction (one commit) per request: the account and its key, the signature,
        the nonce used up, the rate limit counted, the reply's nonce, and the work. A
        refusal (:class:`AcmeProblem`) from the work rolls back to a savepoint and still
        commits the preamble, so a refused request spends its nonce like any other.

        ``durable``: the work must survive a power cut (an issuance, a revocation, an
        account's key or status), unless the request is a POST-as-GET. Other work (an
        order, a validation's progress, a nonce) a client simply does again if lost,
        and a replay of it does no harm: its commit does not wait for the disk
        (:meth:`mtlskit.database.Database.transaction`).
        """
        request = self._parse(incoming, jwk=jwk, kid=kid)
        durable = durable and not request.is_post_as_get
        account_id = None
        if request.kid is not None:
            account_prefix = self.url("acct") + "/"
            account_id = request.kid.removeprefix(account_prefix)
            if not request.kid.startswith(account_prefix) or "/" in account_id or not account_id:
                raise AcmeProblem("accountDoesNotExist", f"no account at {request.kid}")
        now = self.now()
        refused: AcmeProblem | None = None
        with self.transaction(durable=durable) as tx:
            account = None
            key = request.jwk
            if account_id is not None:
                account = Account.get(tx, account_id)
                if account is None:
                    raise AcmeProblem("accountDoesNotExist", f"no account at {request.kid}")
                if account.status != "valid":
                    raise AcmeProblem("unauthorized", f"the account is {account.status}")
                key = J.jwk_from_json(account.jwk)
                J.verify(request, key)
            assert key is not None and request.nonce is not None
            if not consume_nonce(tx, request.nonce, now):
                raise AcmeProblem(
                    "badNonce", "the nonce was already used, has expired, or is not ours"
                )
            self._check_rate(
                tx, f"account:{account_id}" if account_id else f"addr:{incoming.client}"
            )
            auth = Auth(request, key, account, mint_nonce(tx, now))
            try:
                with tx.savepoint():
                    yield auth, tx
            except AcmeProblem as problem:
                problem.nonce = auth.nonce
                refused = problem
        if refused is not None:
            raise refused

    def _check_rate(self, tx: Transaction, key: str) -> None:
        """The service's per-account / per-address limit (shared by replicas via the DB)."""
        try:
            self.state.check_rate(key, tx=tx)
        except RefusedError as exc:
            if exc.status != 429:
                raise
            raise AcmeProblem(
                "rateLimited",
                f"{exc.what}; retry in {exc.retry_after} s",
                retry_after=exc.retry_after,
            ) from None

    # -- accounts ------------------------------------------------------------------------

    def _account_json(self, account: Account) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": account.status,
            "contact": account.body.get("contact", []),
            "orders": self.url("acct", account.id, "orders"),
            "createdAt": account.created_at,
        }
        if account.body.get("termsOfServiceAgreed"):
            body["termsOfServiceAgreed"] = True
        if account.body.get("eab_kid"):
            body["externalAccountBinding"] = {"kid": account.body["eab_kid"]}
        return body

    def _account_reply(self, account: Account, auth: Auth, status: int = 200) -> Reply:
        return Reply(
            status=status,
            body=self._account_json(account),
            headers={"Location": self.url("acct", account.id)},
            nonce=auth.nonce,
        )

    @staticmethod
    def _contacts(value: object) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise AcmeProblem("malformed", "contact must be a list of mailto: URLs")
        if len(value) > MAX_CONTACTS:
            raise AcmeProblem("invalidContact", f"at most {MAX_CONTACTS} contacts")
        for contact in value:
            scheme, _, address = contact.partition(":")
            if scheme.lower() != "mailto":
                raise AcmeProblem(
                    "unsupportedContact", f"{contact!r}: only mailto: contacts are supported"
                )
            local, at, domain = address.partition("@")
            if not local or not at or not domain or "," in address or "?" in address:
                raise AcmeProblem("invalidContact", f"{contact!r} is not one email address")
        return list(value)

    def new_account(self, incoming: Incoming) -> Reply:
        with self.signed(incoming, jwk=True, kid=False, durable=True) as (auth, tx):
            payload = auth.request.json_payload()
            thumb = J.thumbprint(auth.jwk)
            existing = Account.by_thumbprint(tx, thumb)
            if existing is not None:
                if existing.status != "valid":
                    raise AcmeProblem("unauthorized", f"the account is {existing.status}")
                return self._account_reply(existing, auth)
            if payload.get("onlyReturnExisting") is True:
                raise AcmeProblem("accountDoesNotExist", "no account has this key")
            contact = self._contacts(payload.get("contact", []))
            eab_kid = self._check_eab(payload.get("externalAccountBinding"), auth)
            account = Account(
                id=new_id(),
                thumbprint=thumb,
                jwk=J.jwk_json(auth.jwk),
                status="valid",
                body={
                    "contact": contact,
                    "termsOfServiceAgreed": payload.get("termsOfServiceAgreed") is True,
                    "eab_kid": eab_kid,
                },
                created_at=format_time(self.now()),
            )
            # Two registrations of one key at once: the UNIQUE thumbprint refuses the
            # second (a 500 its client retries, and then finds the account).
            account.insert(tx)
        log.info(
            "acme account created id=%s key=%s contact=%s eab=%s",
            account.id,
            thumb,
            ",".join(contact) or "-",
            eab_kid or "-",
        )
        return self._account_reply(account, auth, status=201)

    def _check_eab(self, eab: object, auth: Auth) -> str | None:
        """External Account Binding (RFC 8555 7.3.4): a MAC over the account key."""
        if not self.eab_keys:
            return None  # not asked for: a binding sent anyway is ignored (7.3.4)
        if eab is None:
            raise AcmeProblem(
                "externalAccountRequired",
                "this CA requires an external account binding (ask its operator for a key ID "
                "and HMAC key)",
            )
        if not isinstance(eab, dict):
            raise AcmeProblem("malformed", "externalAccountBinding must be a JWS object")
        inner = J.parse_jws(eab, algorithms=J.EAB_ALGORITHMS)
        if inner.kid is None or inner.jwk is not None or inner.nonce is not None:
            raise AcmeProblem(
                "malformed", "the external account binding needs a kid, and no jwk or nonce"
            )
        if inner.url != auth.request.url:
            raise AcmeProblem("unauthorized", "the external account binding's url is not this one")
        key_b64 = self.eab_keys.get(inner.kid)
        if key_b64 is None:
            raise AcmeProblem("unauthorized", f"unknown external account key ID {inner.kid!r}")
        bound = J.jwk_from_json(inner.json_payload())
        if not J.same_key(bound, auth.jwk):
            raise AcmeProblem("unauthorized", "the external account binding is for another key")
        if not J.verify_mac(inner, _b64decode(key_b64, "the EAB key")):
            raise AcmeProblem("unauthorized", "the external account binding's MAC does not verify")
        return inner.kid

    def account(self, incoming: Incoming) -> Reply:
        with self.signed(incoming, durable=True) as (auth, tx):
            if incoming.params["id"] != auth.account_id:
                raise AcmeProblem("unauthorized", "this account URL is not the signer's account")
            account = auth.account
            assert account is not None
            if auth.request.is_post_as_get:
                return self._account_reply(account, auth)
            payload = auth.request.json_payload()
            if "contact" in payload:
                account.body["contact"] = self._contacts(payload["contact"])
            status = payload.get("status")
            if status is not None and status != account.status:
                if status != "deactivated":
                    raise AcmeProblem(
                        "malformed", "an account's status can only become deactivated"
                    )
                account.status = "deactivated"
            account.save(tx)
        if account.status == "deactivated":
            log.info("acme account deactivated id=%s", account.id)
        return self._account_reply(account, auth)

    def account_orders(self, incoming: Incoming) -> Reply:
        with self.signed(incoming) as (auth, tx):
            if incoming.params["id"] != auth.account_id:
                raise AcmeProblem("unauthorized", "these are not the signer's orders")
            orders = Order.of_account(tx, auth.account_id)
        now = self.now()
        live = [o for o in orders if self._order_status(o, now) != "invalid"]
        return Reply(body={"orders": [self.url("order", o.id) for o in live]}, nonce=auth.nonce)

    def key_change(self, incoming: Incoming) -> Reply:
        """Roll the account over to a new key (RFC 8555 7.3.5)."""
        with self.signed(incoming, durable=True) as (auth, tx):
            account = auth.account
            assert account is not None
            inner = J.parse_jws(auth.request.json_payload())
            if inner.jwk is None or inner.kid is not None:
                raise AcmeProblem("malformed", "the inner JWS of a key change must carry a jwk")
            if inner.nonce is not None:
                raise AcmeProblem(
                    "malformed", "the inner JWS of a key change must not have a nonce"
                )
            if inner.url != auth.request.url:
                raise AcmeProblem("malformed", "the inner JWS url must equal the outer one")
            J.verify(inner, inner.jwk)
            payload = inner.json_payload()
            if payload.get("account") != auth.request.kid:
                raise AcmeProblem("malformed", "the key change names another account")
            if not isinstance(payload.get("oldKey"), dict) or not J.same_key(
                J.jwk_from_json(payload["oldKey"]), auth.jwk
            ):
                raise AcmeProblem("malformed", "oldKey is not the account's current key")
            new_thumb = J.thumbprint(inner.jwk)
            holder = Account.by_thumbprint(tx, new_thumb)
            if holder is not None:
                raise AcmeProblem(
                    "malformed",
                    "the new key already belongs to an account",
                    status=409,
                    headers={"Location": self.url("acct", holder.id)},
                )
            account.thumbprint = new_thumb
            account.jwk = J.jwk_json(inner.jwk)
            account.save(tx)
        log.info("acme account key changed id=%s key=%s", account.id, new_thumb)
        return self._account_reply(account, auth)

    # -- orders --------------------------------------------------------------------------

    def new_order(self, incoming: Incoming) -> Reply:
        with self.signed(incoming) as (auth, tx):
            return self._new_order(auth, tx)

    def _new_order(self, auth: Auth, tx: Transaction) -> Reply:
        payload = auth.request.json_payload()
        for name in ("notBefore", "notAfter"):
            if name in payload:
                raise AcmeProblem(
                    "malformed",
                    f"{name} is not supported: this CA sets the lifetime ({self._lifetime_text()})",
                )
        raw = payload.get("identifiers")
        if not isinstance(raw, list) or not raw:
            raise AcmeProblem("malformed", "newOrder needs a non-empty list of identifiers")
        if len(raw) > MAX_IDENTIFIERS:
            raise AcmeProblem("rejectedIdentifier", f"at most {MAX_IDENTIFIERS} identifiers")
        idents: list[Identifier] = []
        problems: list[AcmeProblem] = []
        for item in raw:
            try:
                ident = parse_identifier(item)
                self.policy.check(ident)
            except AcmeProblem as problem:
                problems.append(problem)
                continue
            if ident not in idents:
                idents.append(ident)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            kinds = {p.type for p in problems}
            top = kinds.pop() if len(kinds) == 1 else "rejectedIdentifier"
            raise AcmeProblem(
                top,
                f"{len(problems)} identifiers were refused: "
                + "; ".join(p.detail for p in problems),
                subproblems=problems,
            )
        idents.sort()
        now = self.now()
        expires = format_time(now + ORDER_LIFETIME)
        order = Order(
            id=new_id(),
            account_id=auth.account_id,
            status="pending",
            expires_at=expires,
            body={"identifiers": [i.to_json() for i in idents], "authzs": []},
            serial=None,
            created_at=format_time(now),
        )
        authzs: list[Authz] = []
        challenges: list[Challenge] = []
        for ident in idents:
            authz = Authz(
                id=new_id(),
                account_id=auth.account_id,
                order_id=order.id,
                identifier_type=ident.type,
                identifier_value=ident.value,
                status="pending",
                expires_at=expires,
            )
            authzs.append(authz)
            order.body["authzs"].append(authz.id)
            for kind in CHALLENGE_TYPES:
                # RFC 8555 8.1: tokens carry at least 128 bits; base64url, no padding.
                challenges.append(
                    Challenge(new_id(), authz.id, kind, new_id() + new_id(), "pending")
                )
        order.insert(tx)
        for authz in authzs:
            authz.insert(tx)
        for challenge in challenges:
            challenge.insert(tx)
        return Reply(
            status=201,
            body=self._order_json(order, now),
            headers={"Location": self.url("order", order.id)},
            nonce=auth.nonce,
        )

    def _lifetime_text(self) -> str:
        lifetime = self.state.config.lifetime
        hours = lifetime.total_seconds() / 3600
        return f"{hours:g} h"

    @staticmethod
    def _order_status(order: Order, now: dt.datetime) -> str:
        if order.status in ("pending", "ready") and parse_time(order.expires_at) <= now:
            return "invalid"
        return order.status

    def _order_json(self, order: Order, now: dt.datetime) -> dict[str, Any]:
        status = self._order_status(order, now)
        body: dict[str, Any] = {
            "status": status,
            "expires": order.expires_at,
            "identifiers": order.body["identifiers"],
            "authorizations": [self.url("authz", a) for a in order.body["authzs"]],
            "finalize": self.url("order", order.id, "finalize"),
        }
        if status == "valid":
            body["certificate"] = self.url("cert", order.id)
        if order.body.get("error"):
            body["error"] = order.body["error"]
        elif status == "invalid":
            body["error"] = AcmeProblem("malformed", "the order expired", status=0).to_json()
        return body

    def _owned_order(self, tx: Transaction, order_id: str, auth: Auth) -> Order:
        order = Order.get(tx, order_id)
        if order is None:
            raise AcmeProblem("malformed", "no such order", status=404)
        if order.account_id != auth.account_id:
            raise AcmeProblem("unauthorized", "this order belongs to another account")
        return order

    def order(self, incoming: Incoming) -> Reply:
        now = self.now()
        with self.signed(incoming) as (auth, tx):
            order = self._owned_order(tx, incoming.params["id"], auth)
        return Reply(body=self._order_json(order, now), nonce=auth.nonce)

    # -- authorizations and challenges ---------------------------------------------------

    def _challenge_json(self, challenge: Challenge) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": challenge.type,
            "url": self.url("chall", challenge.id),
            "token": challenge.token,
            "status": challenge.status,
        }
        if challenge.body.get("validated"):
            body["validated"] = challenge.body["validated"]
        if challenge.body.get("error"):
            body["error"] = challenge.body["error"]
        return body

    def _authz_json(
        self, authz: Authz, challenges: list[Challenge], now: dt.datetime
    ) -> dict[str, Any]:
        status = authz.status
        if status == "pending" and parse_time(authz.expires_at) <= now:
            status = "expired"
        shown = challenges
        if status == "valid":  # RFC 8555 7.1.4: the challenge that was validated
            shown = [c for c in challenges if c.status == "valid"] or challenges
        return {
            "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
            "status": status,
            "expires": authz.expires_at,
            "challenges": [self._challenge_json(c) for c in shown],
        }

    def _owned_authz(self, tx: Transaction, authz_id: str, auth: Auth) -> Authz:
        authz = Authz.get(tx, authz_id)
        if authz is None:
            raise AcmeProblem("malformed", "no such authorization", status=404)
        if authz.account_id != auth.account_id:
            raise AcmeProblem("unauthorized", "this authorization belongs to another account")
        return authz

    def authz(self, incoming: Incoming) -> Reply:
        now = self.now()
        with self.signed(incoming, durable=True) as (auth, tx):
            authz = self._owned_authz(tx, incoming.params["id"], auth)
            challenges = Challenge.of_authz(tx, authz.id)
            if not auth.request.is_post_as_get:
                payload = auth.request.json_payload()
                if payload.get("status") != "deactivated":
                    raise AcmeProblem(
                        "malformed", 'an authorization can only be updated to "deactivated"'
                    )
                for old in ("pending", "valid"):
                    if authz.move(tx, old, "deactivated"):
                        order = Order.get(tx, authz.order_id)
                        if order is not None:
                            order.body["error"] = AcmeProblem(
                                "unauthorized", "an authorization was deactivated", status=0
                            ).to_json()
                            order.move(tx, ("pending", "ready"), "invalid")
                        break
            restart = self._claim_stale(tx, challenges, now)
        for challenge in restart:
            self._start_validation(challenge, authz, auth.thumbprint)
        headers = {"Retry-After": str(POLL_SECONDS)} if authz.status == "pending" else {}
        return Reply(
            body=self._authz_json(authz, challenges, now), headers=headers, nonce=auth.nonce
        )

    def challenge(self, incoming: Incoming) -> Reply:
        now = self.now()
        with self.signed(incoming) as (auth, tx):
            challenge = Challenge.get(tx, incoming.params["id"])
            if challenge is None:
                raise AcmeProblem("malformed", "no such challenge", status=404)
            authz = self._owned_authz(tx, challenge.authz_id, auth)
            start: list[Challenge] = []
            if not auth.request.is_post_as_get:
                auth.request.json_payload()  # "{}" asks for validation (RFC 8555 7.5.1)
                if authz.status == "pending" and parse_time(authz.expires_at) <= now:
                    raise AcmeProblem("malformed", "the authorization has expired")
                if authz.status == "pending" and challenge.status == "pending":
                    self._mark_processing(challenge, now)
                    if challenge.move(tx, "pending", "processing"):
                        start.append(challenge)
            start += self._claim_stale(tx, [challenge], now)
        # After the commit: the validation thread reads what this transaction wrote.
        futures = [self._start_validation(claimed, authz, auth.thumbprint) for claimed in start]
        headers = {"Link": f'<{self.url("authz", authz.id)}>;rel="up"'}
        reply = Reply(body=self._challenge_json(challenge), headers=headers, nonce=auth.nonce)
        if challenge.status == "processing":
            headers["Retry-After"] = str(POLL_SECONDS)
            reply.wait = futures[0] if futures else None
        return reply

    def settled(self, reply: Reply) -> Reply:
        """A challenge reply once its validation has finished (see :attr:`Reply.wait`)."""
        assert reply.wait is not None and reply.wait.done()
        saved = reply.wait.result()
        if saved is not None and saved.status != "processing":
            reply.body = self._challenge_json(saved)
            reply.headers.pop("Retry-After", None)
        reply.wait = None
        return reply

    def _mark_processing(self, challenge: Challenge, now: dt.datetime) -> None:
        """Claimed by this replica, now: its validation runs here."""
        challenge.body["processing_since"] = format_time(now)
        challenge.body["processing_by"] = self.state.replica_id

    def _stale(self, tx: Transaction, body: dict[str, Any], now: dt.datetime) -> bool:
        """Whether the validation that claimed a challenge will never report: it is past
        STALE_PROCESSING, or the replica that runs it has stopped (killed, crashed)."""
        since = body.get("processing_since")
        if since is None or parse_time(since) + STALE_PROCESSING <= now:
            return True
        owner = body.get("processing_by")
        return (
            isinstance(owner, str)
            and owner != self.state.replica_id
            and self.state.replica_gone(tx, owner)
        )

    def _claim_stale(
        self, tx: Transaction, challenges: list[Challenge], now: dt.datetime
    ) -> list[Challenge]:
        """Challenges whose result never came (their replica stopped): validated again."""
        claimed = []
        for challenge in challenges:
            if challenge.status != "processing" or not self._stale(tx, challenge.body, now):
                continue
            self._mark_processing(challenge, now)
            if challenge.move(tx, "processing", "processing"):
                claimed.append(challenge)
        return claimed

    # -- validation (in the background) --------------------------------------------------

    def executor(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    VALIDATION_THREADS, thread_name_prefix="acme-validate"
                )
            return self._executor

    def _start_validation(
        self, challenge: Challenge, authz: Authz, thumbprint: str
    ) -> Future[Challenge | None] | None:
        """Validate in a thread; the future gives the challenge as saved (None: not saved)."""
        ident = Identifier(authz.identifier_type, authz.identifier_value)
        key_auth = J.key_authorization(challenge.token, thumbprint)
        try:
            return self.executor().submit(
                self._validate, challenge.id, ident, challenge.type, key_auth
            )
        except RuntimeError:  # shutting down: left "processing", restarted once stale
            log.warning("validation of %s not started: the service is stopping", ident)
            return None

    def _validate(
        self, challenge_id: str, ident: Identifier, kind: str, key_auth: str
    ) -> Challenge | None:
        config = self.state.config
        started = time.monotonic()
        error: AcmeProblem | None = None
        try:
            validate(
                kind,
                ident,
                key_auth.partition(".")[0],
                key_auth,
                http_port=config.acme_http_port,
                tls_port=config.acme_tls_port,
                static=self.resolve,
            )
        except AcmeProblem as problem:
            error = problem
        except Exception as exc:  # a bug must not leave the challenge processing forever
            log.exception("validation of %s (%s) failed unexpectedly", ident, kind)
            error = AcmeProblem("serverInternal", f"validation failed: {type(exc).__name__}")
        seconds = time.monotonic() - started
        outcome = "valid" if error is None else "invalid"
        self.state.metrics.observe_validation(seconds)
        self.state.metrics.count_acme(f"validate-{kind}", outcome)
        try:
            saved = self._record_validation(challenge_id, error)
        except MtlsError as exc:
            log.error("validation result of %s not saved (retried when stale): %s", ident, exc)
            return None
        if error is None:
            log.info("%s validated %s in %.3f s", kind, ident, seconds)
        else:
            log.info("%s refused %s: %s", kind, ident, error.detail)
        return saved

    def _record_validation(self, challenge_id: str, error: AcmeProblem | None) -> Challenge | None:
        """Save the result: challenge, authorization, and the order when it is decided."""
        now = self.now()
        with self.transaction(durable=False) as tx:
            challenge = Challenge.get(tx, challenge_id)
            if challenge is None or challenge.status != "processing":
                return challenge
            authz = Authz.get(tx, challenge.authz_id)
            if authz is None:
                return None
            challenge.body.pop("processing_since", None)
            challenge.body.pop("processing_by", None)
            if error is None:
                challenge.body["validated"] = format_time(now)
                challenge.move(tx, "processing", "valid")
                if authz.move(tx, "pending", "valid"):
                    statuses = {a.status for a in Authz.of_order(tx, authz.order_id)}
                    if statuses == {"valid"}:
                        order = Order.get(tx, authz.order_id)
                        if order is not None:
                            order.move(tx, "pending", "ready")
                return challenge
            problem = error.to_json()
            problem.pop("status", None)
            problem["identifier"] = {"type": authz.identifier_type, "value": authz.identifier_value}
            challenge.body["error"] = problem
            challenge.move(tx, "processing", "invalid")
            if authz.move(tx, "pending", "invalid"):
                order = Order.get(tx, authz.order_id)
                if order is not None:
                    order.body["error"] = problem
                    order.move(tx, ("pending", "ready"), "invalid")
            return challenge

    # -- finalize and certificates -------------------------------------------------------

    def finalize(self, incoming: Incoming) -> Reply:
        """Issue in the request's one transaction: the certificate is recorded and the
        order made valid together, or neither. So an order is never left half-finalized:
        a replica that dies before the commit leaves it "ready", finalizable on another
        (RFC 8555 7.1.6 lets "ready" go straight to "valid")."""
        now = self.now()
        with self.signed(incoming, durable=True) as (auth, tx):
            payload = auth.request.json_payload()
            order = self._owned_order(tx, incoming.params["id"], auth)
            status = self._order_status(order, now)
            if status != "ready":
                why = {
                    "pending": "its authorizations are not all valid yet",
                    "valid": "it already has its certificate",
                    "invalid": "it is invalid",
                }.get(status, status)
                raise AcmeProblem("orderNotReady", f"the order cannot be finalized: {why}")
            csr = self._check_csr(payload.get("csr"), order, auth)
            order.body["chain_pem"], order.serial = self._issue(csr, order, incoming, tx)
            # Of two finalize calls at once, one moves the order; the other's certificate
            # goes with its rolled-back savepoint (PostgreSQL: it waits on the row lock).
            if not order.move(tx, "ready", "valid"):
                raise AcmeProblem("orderNotReady", "the order was finalized by another request")
        return Reply(
            body=self._order_json(order, self.now()),
            headers={"Location": self.url("order", order.id)},
            nonce=auth.nonce,
        )

    def _check_csr(self, value: object, order: Order, auth: Auth) -> CheckedCSR:
        der = _b64decode(value, "csr")
        try:
            csr = x509.load_der_x509_csr(der)
        except ValueError as exc:
            raise AcmeProblem("badCSR", f"the CSR cannot be parsed: {exc}") from None
        try:
            checked = check_csr(csr)  # the service's checks: signature, key, not a CA
        except RefusedError as exc:
            raise AcmeProblem("badCSR", exc.what) from None
        key = csr.public_key()
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if spki == J.public_key_der(auth.jwk):
            raise AcmeProblem(
                "badCSR", "the CSR's key is the account key: use a separate key for the certificate"
            )
        wanted = {parse_identifier(i) for i in order.body["identifiers"]}
        asked = csr_identifiers(csr)
        if asked != wanted:
            extra = sorted(str(i) for i in asked - wanted)
            missing = sorted(str(i) for i in wanted - asked)
            parts = []
            if extra:
                parts.append(f"not in the order: {', '.join(extra)}")
            if missing:
                parts.append(f"missing: {', '.join(missing)}")
            raise AcmeProblem("badCSR", f"the CSR's names must be the order's ({'; '.join(parts)})")
        return checked

    def _issue(
        self,
        csr: CheckedCSR,
        order: Order,
        incoming: Incoming,
        tx: Transaction,
    ) -> tuple[str, str]:
        """The one issuance path of the service: profile ``server``, the service's lifetime."""
        idents = [parse_identifier(i) for i in order.body["identifiers"]]
        names = [f"{'IP' if i.type == 'ip' else 'DNS'}:{i.value}" for i in idents]
        try:
            issued = issue_from_csr(
                self.state,
                csr,
                names=names,
                profile="server",
                route="acme",
                requester=f"account:{order.account_id}",
                address=incoming.client or None,
                tx=tx,
            )
        except (ConfigError, RefusedError) as exc:  # the request, not the CA, is at fault
            raise AcmeProblem("badCSR", exc.what) from None
        chain_text = issued.chain_pem.decode()
        if not self.state.ca.leaf_chain:
            # Issued by a root: the ACME chain still names its issuer, because clients
            # split it into cert + chain and certbot refuses a chain of one.
            chain_text += cert_pem(self.state.ca.certificate).decode()
        return chain_text, issued.serial

    def certificate(self, incoming: Incoming) -> Reply:
        with self.signed(incoming) as (auth, tx):
            order = self._owned_order(tx, incoming.params["id"], auth)
            if order.status != "valid" or not order.body.get("chain_pem"):
                raise AcmeProblem("malformed", "this order has no certificate", status=404)
        return Reply(
            body=order.body["chain_pem"],
            media_type="application/pem-certificate-chain",
            nonce=auth.nonce,
        )

    # -- revocation ----------------------------------------------------------------------

    def revoke_cert(self, incoming: Incoming) -> Reply:
        with self.signed(incoming, jwk=True, kid=True, durable=True) as (auth, tx):
            payload = auth.request.json_payload()
            der = _b64decode(payload.get("certificate"), "certificate")
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError as exc:
                raise AcmeProblem("malformed", f"the certificate cannot be parsed: {exc}") from None
            reason_code = payload.get("reason", 0)
            if not isinstance(reason_code, int) or reason_code not in REVOCATION_REASONS:
                raise AcmeProblem(
                    "badRevocationReason",
                    f"reason {reason_code!r} is not accepted; use one of "
                    f"{', '.join(map(str, REVOCATION_REASONS))}",
                )
            try:
                cert.verify_directly_issued_by(self.state.ca.certificate)
            except (ValueError, TypeError, InvalidSignature):
                raise AcmeProblem(
                    "malformed", "this certificate was not issued by this CA"
                ) from None
            serial = serial_hex(cert.serial_number)
            if auth.account is not None:
                owner = Order.by_serial(tx, serial)
                if owner is None or owner.account_id != auth.account_id:
                    raise AcmeProblem(
                        "unauthorized",
                        "this account did not order this certificate: sign with the "
                        "certificate's key, or with the account that ordered it",
                    )
                who = f"account:{auth.account_id}"
            else:
                spki = cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                if spki != J.public_key_der(auth.jwk):
                    raise AcmeProblem(
                        "unauthorized",
                        "the JWS is signed neither by the certificate's key nor an account",
                    )
                who = "certificate-key"
        reason = REVOCATION_REASONS[reason_code]
        try:
            self._revoke(serial, reason)
        except AcmeProblem as problem:
            problem.nonce = auth.nonce
            raise
        self.state.audit_event("revoke", route="acme", serial=serial, reason=reason.value, by=who)
        return Reply(status=200, body=None, nonce=auth.nonce)

    def _revoke(self, serial: str, reason: x509.ReasonFlags) -> None:
        """Mark the inventory revoked (GET /crl lists it from then on)."""
        inventory = self.state.inventory()
        try:
            record = inventory.get(serial)
        except PKIError:
            raise AcmeProblem(
                "malformed", f"certificate {serial} is not in this CA's inventory", status=404
            ) from None
        if record.status == "revoked":
            raise AcmeProblem("alreadyRevoked", f"certificate {serial} is already revoked")
        try:
            inventory.revoke(serial, reason.value)
        except PKIError as exc:  # revoked at this very moment by another request
            raise AcmeProblem("alreadyRevoked", exc.what) from None
