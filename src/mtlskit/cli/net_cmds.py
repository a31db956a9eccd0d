"""`mtlskit serve`: the seed's server (hello world), or any ASGI app, over mTLS."""

from __future__ import annotations

from pathlib import Path

import click

from mtlskit.cli.common import setup_logging
from mtlskit.server import ServerConfig, run
from mtlskit.server.config import DEFAULT_SESSION_CACHE

__all__ = ["serve"]


@click.command(
    help=(
        "Serve HTTPS with required client certificates. Without APP: the seed's hello "
        "world. APP is an ASGI app as module:attribute; it gets the verified client in "
        'scope["extensions"]["tls"].'
    )
)
@click.argument("app", required=False)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Folder with ca.crt, server.crt and server.key.",
)
@click.option(
    "--ca", type=click.Path(dir_okay=False, path_type=Path), help="CA file [certs/ca.crt]."
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Certificate [certs/server.crt].",
)
@click.option(
    "--key", type=click.Path(dir_okay=False, path_type=Path), help="Key [certs/server.key]."
)
@click.option("--host", default="", help="Address to listen on [every interface].")
@click.option("--port", type=int, default=8443, show_default=True)
@click.option("--quiet", is_flag=True, help="Do not log each request.")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes (SO_REUSEPORT).")
@click.option(
    "--no-worker-affinity",
    is_flag=True,
    help="With --workers: spread each client's connections over the workers instead of "
    "keeping them on one by client address (clients behind one address; fewer resumptions).",
)
@click.option(
    "--allow-cn",
    multiple=True,
    metavar="PATTERN",
    help="Allow clients whose subject CN matches this glob (repeatable).",
)
@click.option(
    "--allow-san",
    multiple=True,
    metavar="PATTERN",
    help="Allow clients with a SAN matching DNS:glob, URI:glob or email:glob (repeatable).",
)
@click.option(
    "--crl",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Refuse clients this CRL revokes (make it with mtlskit crl; reloaded when it changes).",
)
@click.option(
    "--watch-interval",
    type=float,
    default=1.0,
    show_default=True,
    metavar="S",
    help="Reload certificate, key, CA and CRL when they change (0: only on SIGHUP).",
)
@click.option(
    "--ticket-key-rotation",
    type=float,
    default=3600.0,
    show_default=True,
    metavar="S",
    help="Start new TLS sessions and ticket keys this often; older tickets stop resuming (0: never).",
)
@click.option(
    "--session-cache",
    type=click.IntRange(min=0),
    default=DEFAULT_SESSION_CACHE,
    show_default=True,
    metavar="N",
    help="TLS 1.3 sessions kept for resumption, ~9 KiB each (0: stateless tickets).",
)
@click.option(
    "--no-client-ca-names",
    is_flag=True,
    help="Do not name the CA bundle's CAs in the CertificateRequest (for very large bundles).",
)
@click.option("--metrics-port", type=int, metavar="PORT", help="Serve Prometheus /metrics here.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Metrics address.")
@click.option("--handshake-timeout", type=float, default=10.0, show_default=True, metavar="S")
@click.option("--idle-timeout", type=float, default=60.0, show_default=True, metavar="S")
def serve(
    app: str | None,
    certs: Path,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    host: str,
    port: int,
    quiet: bool,
    workers: int,
    no_worker_affinity: bool,
    allow_cn: tuple[str, ...],
    allow_san: tuple[str, ...],
    crl: Path | None,
    watch_interval: float,
    ticket_key_rotation: float,
    session_cache: int,
    no_client_ca_names: bool,
    metrics_port: int | None,
    metrics_host: str,
    handshake_timeout: float,
    idle_timeout: float,
) -> None:
    config = ServerConfig(
        certs=certs,
        ca=ca,
        cert=cert,
        key=key,
        host=host,
        port=port,
        app=app,
        quiet=quiet,
        workers=workers,
        worker_affinity=not no_worker_affinity,
        allow_cn=allow_cn,
        allow_san=allow_san,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        crl=crl,
        watch_interval=watch_interval,
        ticket_key_rotation=ticket_key_rotation,
        session_cache=session_cache,
        client_ca_names=not no_client_ca_names,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    setup_logging()
    run(config)
