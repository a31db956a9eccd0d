"""The mTLS HTTP/1.1 server behind ``mtlskit serve``.

::

    lifecycle.py   run(config), Server (start/serve/shutdown, the sweeper of timeouts),
                   the --workers supervisor
    state.py       ServerState (open connections, draining, clock, counters) and
                   ConnectionRules (access rules, limits): what connections share
    protocol.py    one asyncio.Protocol per connection: TLS via the engine, HTTP/1.1
                   (httptools), limits, timeouts, access rules, the built-in hello world
    asgi.py        ASGI 3 (http, websocket, lifespan) with the TLS extension; HostedApp
    asgi_types.py  the ASGI 3 callable's types
    websocket.py   WebSocketCycle: the websocket scope on wsproto
    engine.py      the TLS engine seam (TLSSession), the ClientHello pre-check, and the
                   stdlib ssl implementation
    openssl_engine.py  the default engine: the OpenSSL that cryptography bundles
                   (MTLSKIT_TLS_ENGINE=stdlib selects the stdlib ssl module)
    tlsstate.py    ContextHolder: the current TLSState, reload() swaps it atomically
    reload.py      FileWatcher and SIGHUP: reload on change, ticket key rotation
    revocation.py  the CRL's serials in a set, checked in the handshake
    affinity.py    --workers N: each client kept on one worker (SO_REUSEPORT + BPF)
    metrics.py     Prometheus text on --metrics-port
    stats.py       Stats: counters for metrics
    config.py      ServerConfig: every setting, frozen

Example::

    from mtlskit.server import ServerConfig, run
    run(ServerConfig(certs=Path("certs"), port=8443, app="myapp:app"))
"""

from __future__ import annotations

from mtlskit.server.config import ServerConfig
from mtlskit.server.lifecycle import Server, run
from mtlskit.server.stats import Stats
from mtlskit.server.tlsstate import ContextHolder, TLSState

__all__ = ["ContextHolder", "Server", "ServerConfig", "Stats", "TLSState", "run"]
