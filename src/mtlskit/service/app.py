"""The CA service as an ASGI app (Starlette), served by mtlskit's own server.

::

    GET  /healthz      200 {"status": "ok"} while the database answers, else 503
    GET  /roots.pem    the root CA certificate (bootstrap pins its SHA-256)
    GET  /crl          the CRL, DER (fresh: re-made before nextUpdate)
    POST /enroll       one-time token + CSR -> certificate chain      (anonymous)
    POST /enroll/info  what a token allows, without spending it      (anonymous)
    POST /renew        CSR for a new key, current certificate as the TLS client
                       certificate -> certificate with the same identity
    /acme/...          RFC 8555 (mtlskit.service.acme, when present)

Errors are answered in one place (:func:`_error_response`): a database that fails
or cannot be reached is 503 with Retry-After (nothing was issued), a refused
request its own status (401, 403, 413, 429 with Retry-After), any other mtlskit
error 400; the body is JSON ``{"error": "<one line>"}`` or, under /acme, an RFC
7807 problem document. No traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mtlskit.errors import MtlsError, RefusedError, StorageError
from mtlskit.service.state import REPLICA_BEAT, ServiceState

__all__ = ["create_app", "error_status"]

log = logging.getLogger("mtlskit.service")

RETRY_AFTER_DB = 5  # seconds a client waits when the database is down
MAINTENANCE_INTERVAL = 60.0  # seconds between looks at the service certificate

PEM_TYPE = "application/x-pem-file"
CRL_TYPE = "application/pkix-crl"
PROBLEM_TYPE = "application/problem+json"


def error_status(exc: MtlsError) -> tuple[int, int | None]:
    """The HTTP status (and Retry-After seconds) of an mtlskit error raised by a route."""
    if isinstance(exc, StorageError):
        return 503, RETRY_AFTER_DB
    if isinstance(exc, RefusedError):
        return exc.status, exc.retry_after
    return 400, None


def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MtlsError)
    state: ServiceState = request.app.state.service
    status, retry_after = error_status(exc)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    if isinstance(exc, StorageError):
        state.metrics.count_db_error()
        log.warning("%s %s: 503: %s", request.method, request.url.path, exc.one_line())
        text = "the CA's database is unavailable; nothing was issued: retry later"
    else:
        text = exc.one_line()
    if request.url.path.startswith("/acme"):
        acme_type = getattr(exc, "acme_type", None) or (
            "serverInternal" if status >= 500 else "malformed"
        )
        if status == 429 and not getattr(exc, "acme_type", None):
            acme_type = "rateLimited"
        body = {
            "type": f"urn:ietf:params:acme:error:{acme_type}",
            "detail": text,
            "status": status,
        }
        return Response(json.dumps(body), status, headers=headers, media_type=PROBLEM_TYPE)
    return JSONResponse({"error": text}, status, headers=headers)


class BodyLimit:
    """413 for a request body above ``max_body`` bytes: at once when Content-Length says
    so, else as soon as the body read so far passes it (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Under /acme the routes answer 413 themselves: an RFC 7807 problem with a nonce.
        acme = scope["path"].startswith("/acme/")
        for name, value in scope["headers"]:
            if name == b"content-length" and not acme:
                try:
                    too_large = int(value) > self.max_body
                except ValueError:
                    too_large = False  # httptools refuses a malformed length before us
                if too_large:
                    response = JSONResponse(
                        {"error": f"request body larger than {self.max_body} bytes"}, 413
                    )
                    await response(scope, receive, send)
                    return
        seen = 0
        limit = self.max_body

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RefusedError(f"request body larger than {limit} bytes", status=413)
            return message

        await self.app(scope, limited, send)


def _anonymous_routes(state: ServiceState) -> list[BaseRoute]:
    def healthz(request: Request) -> Response:
        with state.db.transaction() as tx:
            tx.one("SELECT 1 AS ok")
        return JSONResponse({"status": "ok"})

    async def roots(request: Request) -> Response:
        return Response(state.roots_pem, media_type=PEM_TYPE)

    def crl(request: Request) -> Response:
        return Response(state.crl_der(), media_type=CRL_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/roots.pem", roots, methods=["GET"]),
        Route("/crl", crl, methods=["GET"]),
    ]


def _acme_mount(state: ServiceState) -> list[BaseRoute]:
    """The ACME server when its module is installed (mtlskit.service.acme.routes)."""
    if importlib.util.find_spec("mtlskit.service.acme") is None:
        return []
    if importlib.util.find_spec("mtlskit.service.acme.routes") is None:
        return []
    module = importlib.import_module("mtlskit.service.acme.routes")
    routes: Callable[[ServiceState], list[BaseRoute]] = module.routes
    return [Mount("/acme", routes=routes(state))]


async def _maintain(state: ServiceState) -> None:
    """Renew the service's own certificate at 2/3 of its life (the server reloads the
    files); forget old rate-limit windows and replicas. Never dies: errors are one log
    line."""
    while True:
        await asyncio.sleep(MAINTENANCE_INTERVAL)
        try:
            await state.blocking(state.ensure_server_certificate)
            await state.blocking(state.forget_old_rate_windows)
            await state.blocking(state.forget_old_replicas)
        except MtlsError as exc:
            log.warning("maintenance: %s", exc.one_line())
        except Exception:
            log.exception("maintenance failed")


async def _beat(state: ServiceState) -> None:
    """Tell the other replicas this one is alive, every REPLICA_BEAT seconds. A failed
    beat (the database is down) is logged once until one succeeds again."""
    failing = False
    while True:
        try:
            await state.blocking(state.beat)
            failing = False
        except MtlsError as exc:
            if not failing:
                log.warning("replica heartbeat: %s", exc.one_line())
            failing = True
        except Exception:
            log.exception("replica heartbeat failed")
        await asyncio.sleep(REPLICA_BEAT)


def create_app(state: ServiceState) -> Starlette:
    """The ASGI app of the CA service on ``state``."""
    from mtlskit.service import enrollment

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_maintain(state)), loop.create_task(_beat(state))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(MtlsError):
                await state.blocking(state.leave)

    handlers: dict[Any, Callable[[Request, Exception], Response | Awaitable[Response]]] = {
        MtlsError: _error_response
    }
    app = Starlette(
        routes=[
            *_anonymous_routes(state),
            *enrollment.routes(state),
            *_acme_mount(state),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(BodyLimit, max_body=state.config.max_body)
    return app
