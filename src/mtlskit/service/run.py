"""Start the CA service: unlock the CA, issue the service's own certificate when it
needs one, and serve the app with mtlskit's server (client certificates optional)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mtlskit.server.config import ServerConfig
from mtlskit.service.config import ServiceConfig

if TYPE_CHECKING:
    from mtlskit.server.asgi import ASGIApp

__all__ = ["run_service", "server_config"]

log = logging.getLogger("mtlskit.service")


def server_config(
    config: ServiceConfig, app: ASGIApp, extra_metrics: Callable[[], str] | None = None
) -> ServerConfig:
    """The server settings of the service: its own certificate, the CA's certificate as
    the trust for client certificates, which are optional (anonymous routes)."""
    return ServerConfig(
        certs=config.service_dir,
        ca=config.ca_dir / "ca.crt",
        cert=config.service_dir / "server.crt",
        key=config.service_dir / "server.key",
        host=config.host,
        port=config.port,
        app=app,
        client_cert="optional",
        client_cert_any_purpose=True,
        metrics_port=config.metrics_port,
        extra_metrics=extra_metrics,
        quiet=not config.log_requests,
    )


def run_service(config: ServiceConfig, *, passphrase: bytes | None = None) -> None:
    """Serve until SIGINT/SIGTERM: what ``mtlskit ca serve`` does."""
    from mtlskit.server.lifecycle import run
    from mtlskit.service.app import create_app
    from mtlskit.service.state import ServiceState

    state = ServiceState.open(config, passphrase=passphrase)
    try:
        state.ensure_server_certificate()
        app = create_app(state)
        log.info(
            "CA %s, root SHA-256 %s",
            state.ca.certificate.subject.rfc4514_string(),
            state.fingerprint,
        )
        run(server_config(config, app, state.metrics.render))
    finally:
        state.close()
