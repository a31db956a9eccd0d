"""The CA as a network service: ``mtlskit ca serve``.

An ASGI app (:func:`create_app`, Starlette) on mtlskit's own server with client
certificates optional: anonymous routes (health, roots, CRL, enrollment, ACME)
and routes that check the client certificate (renewal). See docs in
:mod:`mtlskit.service.app` and the README's "CA service" section.
"""

from __future__ import annotations

from mtlskit.service.config import ServiceConfig
from mtlskit.service.run import run_service

__all__ = ["ServiceConfig", "create_app", "run_service"]


def __getattr__(name: str) -> object:
    # Starlette is imported only when the app is made, not for ServiceConfig.
    if name == "create_app":
        from mtlskit.service.app import create_app

        return create_app
    raise AttributeError(f"module 'mtlskit.service' has no attribute {name!r}")
