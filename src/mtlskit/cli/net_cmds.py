"""`mtlskit serve`: the seed's server (hello world), or any ASGI app, over mTLS."""

from __future__ import annotations

from pathlib import Path

import click

from mtlskit.cli.common import (
    SERVER_TLS_OPTIONS,
    SESSION_TICKETS_OPTIONS,
    session_tickets_choice,
    setup_logging,
    warn_session_cache,
)
from mtlskit.server import ServerConfig, run

__all__ = ["byte_size", "serve"]


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``1048576``, ``512K``, ``1M``, ``1MiB``, ``2G``: binary multiples."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    number = text.rstrip("KMG")
    unit = text[len(number) :]
    if not number.isdigit() or unit not in _UNITS:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 1048576, 512K, 1M, 2G)")
    return int(number) * _UNITS[unit]


@click.command(
    help=(
        "Serve HTTPS with required client certificates. Without APP: the seed's hello "
        "world. APP is an ASGI app as module:attribute; it gets the verified client in "
        'scope["extensions"]["tls"].'
    )
)
@click.argument("app", required=False)
@SERVER_TLS_OPTIONS
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
    "--ticket-key-rotation",
    type=float,
    default=3600.0,
    show_default=True,
    metavar="S",
    help="Start new TLS sessions and ticket keys this often; older tickets stop resuming (0: never).",
)
@SESSION_TICKETS_OPTIONS
@click.option(
    "--no-client-ca-names",
    is_flag=True,
    help="Do not name the CA bundle's CAs in the CertificateRequest (for very large bundles).",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="A kept-alive connection with no request this long is closed.",
)
@click.option(
    "--head-timeout",
    type=float,
    default=10.0,
    show_default=True,
    metavar="S",
    help="From a request's first byte to the end of its head (then 408).",
)
@click.option(
    "--body-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="A request body that stalls this long (then 408).",
)
@click.option(
    "--write-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="A client that reads nothing of its response this long is dropped.",
)
@click.option(
    "--max-body-size",
    default="1MiB",
    callback=byte_size,
    show_default=True,
    metavar="SIZE",
    help="Larger request bodies get 413 (bytes, or with K/M/G; 0: no limit).",
)
@click.option(
    "--ws-max-size",
    default="16MiB",
    callback=byte_size,
    show_default=True,
    metavar="SIZE",
    help="Larger WebSocket messages close the connection with 1009.",
)
@click.option(
    "--ws-ping-interval",
    type=float,
    default=20.0,
    show_default=True,
    metavar="S",
    help="Ping a quiet WebSocket peer this often (0: never).",
)
@click.option(
    "--ws-ping-timeout",
    type=float,
    default=20.0,
    show_default=True,
    metavar="S",
    help="Drop a WebSocket peer whose pong does not come within this.",
)
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
    session_tickets: str | None,
    session_cache: int | None,
    no_client_ca_names: bool,
    metrics_port: int | None,
    metrics_host: str,
    handshake_timeout: float,
    idle_timeout: float,
    head_timeout: float,
    body_timeout: float,
    write_timeout: float,
    max_body_size: int,
    ws_max_size: int,
    ws_ping_interval: float,
    ws_ping_timeout: float,
) -> None:
    tickets = session_tickets_choice(session_tickets, session_cache)
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
        head_timeout=head_timeout,
        body_timeout=body_timeout,
        write_timeout=write_timeout,
        max_body_size=max_body_size,
        ws_max_size=ws_max_size,
        ws_ping_interval=ws_ping_interval,
        ws_ping_timeout=ws_ping_timeout,
        crl=crl,
        watch_interval=watch_interval,
        ticket_key_rotation=ticket_key_rotation,
        session_tickets=tickets,
        client_ca_names=not no_client_ca_names,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    setup_logging()
    warn_session_cache(session_cache, tickets)
    run(config)
