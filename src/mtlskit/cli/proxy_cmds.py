"""`mtlskit proxy server|client`: mTLS in front of any service, and out of any client."""

from __future__ import annotations

from pathlib import Path

import click

from mtlskit.cli.common import (
    CLIENT_TLS_OPTIONS,
    HANDSHAKE_TIMEOUT_OPTION,
    METRICS_OPTIONS,
    SERVER_TLS_OPTIONS,
    SESSION_TICKETS_OPTIONS,
    session_tickets_choice,
    setup_logging,
    warn_session_cache,
    watch_interval_option,
)

__all__ = ["proxy"]

# What both modes take about their connections.
_CONNECT_TIMEOUT = click.option(
    "--connect-timeout", type=float, default=5.0, show_default=True, metavar="S"
)
_IDLE_TIMEOUT = click.option(
    "--idle-timeout",
    type=float,
    default=600.0,
    show_default=True,
    metavar="S",
    help="Close a connection with no bytes either way for this long.",
)
_SHUTDOWN_TIMEOUT = click.option(
    "--shutdown-timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="On SIGTERM, how long open connections may go on.",
)
_MAX_CONNECTIONS = click.option(
    "--max-connections", type=int, default=4096, show_default=True, metavar="N"
)


@click.group(
    help=(
        "mTLS proxy. server: terminate mTLS, forward to a local service (L4 bytes, or "
        "--http with the client's identity in headers). client: accept plain TCP, "
        "forward over mTLS."
    )
)
def proxy() -> None:
    pass


@proxy.command(
    "server",
    help=(
        "Accept mTLS on --listen and forward to --target: bytes (L4), or HTTP/1.1 with the "
        "verified identity in X-Forwarded-Client-Cert, Client-Cert, Forwarded (--http). "
        "An access rule is required: --allow-cn, --allow-san or --allow-all."
    ),
)
@click.option("--listen", required=True, metavar="HOST:PORT", help="mTLS address to listen on.")
@click.option(
    "--target",
    required=True,
    metavar="HOST:PORT|unix:PATH",
    help="Where to forward (loopback or a unix socket unless --unsafe-target).",
)
@SERVER_TLS_OPTIONS
@click.option("--allow-all", is_flag=True, help="Allow every certificate the CA verifies.")
@click.option("--http", "http", is_flag=True, help="L7: HTTP/1.1 with identity headers.")
@click.option(
    "--proxy-protocol", is_flag=True, help="L4: send a PROXY protocol v2 header to the target."
)
@click.option(
    "--xfcc-fields",
    default="Hash,Subject,URI,DNS",
    show_default=True,
    metavar="LIST",
    help="X-Forwarded-Client-Cert fields: By, Hash, Cert, Chain, Subject, URI, DNS.",
)
@_CONNECT_TIMEOUT
@_IDLE_TIMEOUT
@_SHUTDOWN_TIMEOUT
@_MAX_CONNECTIONS
@click.option(
    "--backend-keepalive",
    type=int,
    default=32,
    show_default=True,
    metavar="N",
    help="--http: idle connections to the target kept for reuse.",
)
@click.option(
    "--unsafe-target", is_flag=True, help="Allow a target on another machine (plain bytes)."
)
@click.option("--quiet", is_flag=True, help="--http: do not log each request.")
@SESSION_TICKETS_OPTIONS
def server(
    listen: str,
    target: str,
    certs: Path,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    crl: Path | None,
    allow_cn: tuple[str, ...],
    allow_san: tuple[str, ...],
    allow_all: bool,
    http: bool,
    proxy_protocol: bool,
    xfcc_fields: str,
    connect_timeout: float,
    idle_timeout: float,
    handshake_timeout: float,
    shutdown_timeout: float,
    max_connections: int,
    backend_keepalive: int,
    unsafe_target: bool,
    quiet: bool,
    watch_interval: float,
    session_tickets: str | None,
    session_cache: int | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    from mtlskit.proxy import Address, ProxyConfig, run_server
    from mtlskit.server import ServerConfig

    tickets = session_tickets_choice(session_tickets, session_cache)
    where = Address.parse(listen, "--listen", unix=False)
    listener = ServerConfig(
        certs=certs,
        ca=ca,
        cert=cert,
        key=key,
        crl=crl,
        host=where.host,
        port=where.port,
        quiet=quiet,
        allow_cn=allow_cn,
        allow_san=allow_san,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        shutdown_timeout=shutdown_timeout,
        watch_interval=watch_interval,
        session_tickets=tickets,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    config = ProxyConfig(
        listener,
        target=Address.parse(target, "--target"),
        allow_all=allow_all,
        http=http,
        proxy_protocol=proxy_protocol,
        xfcc_fields=tuple(f.strip() for f in xfcc_fields.split(",") if f.strip()),
        connect_timeout=connect_timeout,
        max_connections=max_connections,
        backend_keepalive=backend_keepalive,
        unsafe_target=unsafe_target,
    )
    setup_logging()
    warn_session_cache(session_cache, tickets)
    run_server(config)


@proxy.command(
    "client",
    help=(
        "Accept plain TCP on --listen (loopback unless --unsafe-listen) and forward over "
        "mTLS to --target, presenting client.crt and verifying the server's certificate "
        "and name (--server-name, default the target's host)."
    ),
)
@click.option("--listen", required=True, metavar="HOST:PORT", help="Plain address to listen on.")
@click.option("--target", required=True, metavar="HOST:PORT", help="The mTLS server.")
@click.option("--server-name", metavar="NAME", help="Name to verify [the target's host].")
@CLIENT_TLS_OPTIONS
@_CONNECT_TIMEOUT
@HANDSHAKE_TIMEOUT_OPTION
@_IDLE_TIMEOUT
@_SHUTDOWN_TIMEOUT
@_MAX_CONNECTIONS
@watch_interval_option("certificate, key and CA")
@METRICS_OPTIONS
@click.option(
    "--unsafe-listen", is_flag=True, help="Listen beyond loopback (anyone there uses the cert)."
)
def client(
    listen: str,
    target: str,
    server_name: str | None,
    certs: Path,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    connect_timeout: float,
    handshake_timeout: float,
    idle_timeout: float,
    shutdown_timeout: float,
    max_connections: int,
    watch_interval: float,
    metrics_port: int | None,
    metrics_host: str,
    unsafe_listen: bool,
) -> None:
    from mtlskit.proxy import Address, ClientProxyConfig
    from mtlskit.proxy.client import run_client

    config = ClientProxyConfig(
        listen=Address.parse(listen, "--listen", unix=False),
        target=Address.parse(target, "--target", unix=False),
        certs=certs,
        ca=ca,
        cert=cert,
        key=key,
        server_name=server_name,
        connect_timeout=connect_timeout,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        shutdown_timeout=shutdown_timeout,
        max_connections=max_connections,
        watch_interval=watch_interval,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        unsafe_listen=unsafe_listen,
    )
    setup_logging()
    run_client(config)
