"""Starlette glue of the ACME server: HTTP in, a resource, a problem or a reply out."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mtlskit.errors import MtlsError, RefusedError, StorageError
from mtlskit.service.acme.problems import AcmeProblem
from mtlskit.service.acme.resources import Acme, Incoming, Reply
from mtlskit.service.app import RETRY_AFTER_DB
from mtlskit.service.state import ServiceState

__all__ = ["routes"]

log = logging.getLogger("mtlskit.service.acme")

JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# How long a challenge POST waits for the validation it started before answering
# "processing" (the client then polls); validations on a LAN take milliseconds.
VALIDATION_WAIT = 1.0

Handler = Callable[[Incoming], Reply]
# Not durable (Acme.signed): no fsync in them. Finalize, accounts, key change and
# revocation wait for the disk, and go to a thread.
INLINE_KINDS = frozenset(
    {"directory", "new-nonce", "new-order", "order", "authz", "challenge", "cert", "orders"}
)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise AcmeProblem("malformed", f"the request body is over {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                break
            chunks.append(chunk)
    except RefusedError as exc:  # the app's BodyLimit saw it first
        if exc.status != 413:
            raise
        size = limit + 1
    if size > limit:
        raise AcmeProblem("malformed", f"the request body is over {limit} bytes", status=413)
    return b"".join(chunks)


class _Routes:
    """Starlette glue: HTTP in, :class:`Incoming` to a resource, :class:`Reply` out."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.acme = Acme(state)
        # SQLite: requests whose commit need not wait for the disk run on the event loop.
        # Their work (a signature check, a few statements on a local file, ~0.3 ms) costs
        # less than the hand-off to a thread and back; PostgreSQL answers over a
        # socket, so there every request goes to a thread.
        self.inline = state.db.dialect == "sqlite"

    def route(
        self,
        path: str,
        handler: Handler,
        kind: str,
        *,
        signed: bool = True,
        methods: list[str] | None = None,
    ) -> Route:
        if methods is None:
            methods = ALL_METHODS if signed else ["GET", "HEAD"]

        async def endpoint(request: Request) -> Response:
            problem: AcmeProblem | None = None
            body = b""
            if signed:
                if request.method != "POST":
                    problem = AcmeProblem(
                        "malformed",
                        f"{request.method} is not served here: send a signed POST "
                        "(an empty payload reads the resource)",
                        status=405,
                        headers={"Allow": "POST"},
                    )
                elif request.headers.get("content-type", "").split(";")[0].strip() != JOSE_JSON:
                    problem = AcmeProblem(
                        "malformed", f"the Content-Type must be {JOSE_JSON}", status=415
                    )
                else:
                    try:
                        body = await _read_body(request, self.state.config.max_body)
                    except AcmeProblem as exc:
                        problem = exc
            host = request.headers.get("host", "")
            # The ASGI path as it is: request.url would build (and parse) a whole URL.
            path = request.scope["path"]
            incoming = Incoming(
                method=request.method,
                url=f"https://{host}{path}",
                path=path.removeprefix(request.scope.get("root_path", "")),
                params=dict(request.path_params),
                body=body,
                client=request.client.host if request.client else "",
            )
            if self.inline and kind in INLINE_KINDS:
                reply = self.respond(kind, handler, incoming, problem)
            else:
                reply = await self.state.blocking(self.respond, kind, handler, incoming, problem)
            if reply.wait is not None:
                # asyncio.wait, not wait_for: a timeout must not cancel the validation.
                await asyncio.wait({asyncio.wrap_future(reply.wait)}, timeout=VALIDATION_WAIT)
                if reply.wait.done():
                    reply = self.acme.settled(reply)
                reply.wait = None
            return self._response(reply)

        return Route(path, endpoint, methods=methods, name=f"acme-{kind}")

    def respond(
        self, kind: str, handler: Handler, incoming: Incoming, problem: AcmeProblem | None
    ) -> Reply:
        try:
            if problem is not None:
                raise problem
            reply = handler(incoming)
            outcome = "ok"
        except AcmeProblem as exc:
            reply, outcome = self._problem_reply(exc), exc.type
        except StorageError as exc:
            # As the rest of the service: the database failed, nothing was half-written
            # (the transaction rolled back), retry shortly.
            log.error("acme %s: %s", kind, exc)
            self.state.metrics.count_db_error()
            failure = AcmeProblem(
                "serverInternal",
                "the CA's database is unavailable; nothing was changed: retry shortly",
                status=503,
                retry_after=RETRY_AFTER_DB,
            )
            reply, outcome = self._problem_reply(failure), "serverInternal"
        except MtlsError as exc:
            log.error("acme %s: %s", kind, exc)
            failure = AcmeProblem("serverInternal", "the CA could not do this; see its log")
            reply, outcome = self._problem_reply(failure), "serverInternal"
        except Exception:
            log.exception("acme %s failed", kind)
            failure = AcmeProblem("serverInternal", "internal error; see the CA's log")
            reply, outcome = self._problem_reply(failure), "serverInternal"
        self._count(kind, outcome)
        return reply

    def _problem_reply(self, problem: AcmeProblem) -> Reply:
        nonce = problem.nonce
        try:
            nonce = nonce or self.acme.mint()
        except MtlsError as exc:  # the database is down: a reply without a nonce
            log.warning("no Replay-Nonce for an error reply: %s", exc)
        return Reply(
            status=problem.status,
            body=problem.to_json(),
            headers=problem.response_headers(),
            nonce=nonce,
            media_type=PROBLEM_JSON,
        )

    def _response(self, reply: Reply) -> Response:
        headers = dict(reply.headers)
        if reply.nonce is not None:
            headers["Replay-Nonce"] = reply.nonce
        link = f'<{self.acme.url("directory")}>;rel="index"'
        headers["Link"] = f"{headers['Link']}, {link}" if "Link" in headers else link
        headers.setdefault("Cache-Control", "no-store")
        if reply.body is None:
            content = b""
        elif isinstance(reply.body, str):
            content = reply.body.encode()
        else:
            # No indent: json's C encoder serves only indent=None (pretty JSON went
            # through the pure-Python one, ~2 % of an ACME order).
            content = json.dumps(reply.body, separators=(",", ":")).encode()
        return Response(
            content=content,
            status_code=reply.status,
            headers=headers,
            media_type=reply.media_type if content or reply.status != 204 else None,
        )

    def _count(self, kind: str, outcome: str) -> None:
        self.state.metrics.count_acme(kind, outcome)

    def unknown(self, incoming: Incoming) -> Reply:
        raise AcmeProblem("malformed", f"no ACME resource at {incoming.path}", status=404)

    def table(self) -> list[BaseRoute]:
        a = self.acme
        return [
            self.route("/directory", a.directory, "directory", signed=False),
            self.route("/new-nonce", a.new_nonce, "new-nonce", signed=False),
            self.route("/new-account", a.new_account, "new-account"),
            self.route("/acct/{id}", a.account, "account"),
            self.route("/acct/{id}/orders", a.account_orders, "orders"),
            self.route("/key-change", a.key_change, "key-change"),
            self.route("/new-order", a.new_order, "new-order"),
            self.route("/order/{id}", a.order, "order"),
            self.route("/order/{id}/finalize", a.finalize, "finalize"),
            self.route("/authz/{id}", a.authz, "authz"),
            self.route("/chall/{id}", a.challenge, "challenge"),
            self.route("/cert/{id}", a.certificate, "cert"),
            self.route("/revoke-cert", a.revoke_cert, "revoke-cert"),
            self.route("/{rest:path}", self.unknown, "unknown", signed=False, methods=ALL_METHODS),
        ]


def routes(state: ServiceState) -> list[BaseRoute]:
    """The ACME routes for ``Mount("/acme", routes=acme.routes(state))``."""
    return _Routes(state).table()
