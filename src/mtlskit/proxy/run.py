"""Run a proxy until SIGINT/SIGTERM: the server's lifecycle with the proxy's protocol.

Server mode runs :func:`mtlskit.server.lifecycle.run` with a protocol factory:
the same certificate checks before starting, the same listening socket, sweeper
(handshake and idle timeouts), SIGHUP and file-watch reload, metrics and drain
as ``mtlskit serve``.
"""

from __future__ import annotations

from mtlskit.proxy.config import ProxyConfig
from mtlskit.proxy.http import HTTPContext, HTTPProxy
from mtlskit.proxy.stream import ProxyContext, StreamProxy
from mtlskit.server.lifecycle import ProtocolFactory
from mtlskit.server.lifecycle import run as run_server_lifecycle
from mtlskit.server.protocol import BaseProtocol
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.tlsstate import TLSState

__all__ = ["protocol_factory", "run_server"]


def protocol_factory(config: ProxyConfig) -> ProtocolFactory:
    """What makes the protocol of each accepted connection, L4 or L7."""
    if config.http:
        http = HTTPContext(config)

        def make_http(state: ServerState, rules: ConnectionRules, tls: TLSState) -> BaseProtocol:
            return HTTPProxy(state, rules, tls, http)

        return make_http
    stream = ProxyContext(config)

    def make_stream(state: ServerState, rules: ConnectionRules, tls: TLSState) -> BaseProtocol:
        return StreamProxy(state, rules, tls, stream)

    return make_stream


def run_server(config: ProxyConfig) -> None:
    """``mtlskit proxy server``: serve until SIGINT/SIGTERM, then drain."""
    run_server_lifecycle(config.listener, protocol=protocol_factory(config), banner=config.banner)
