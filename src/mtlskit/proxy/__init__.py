"""``mtlskit proxy``: mTLS in front of any service (server mode), and out of any client
(client mode), ghostunnel's job, with the verified identity passed on.

::

    config.py          ProxyConfig, ClientProxyConfig, Address: every option, checked once
    run.py             run_server(config): the server's lifecycle with the proxy's protocol
    stream.py          L4: StreamProxy, bytes both ways, half-close, backpressure
    proxy_protocol.py  the PROXY protocol v2 header (--proxy-protocol)
    http.py            L7 (--http): HTTPProxy, Exchange, BackendConnection, BackendPool
    headers.py         identity headers (XFCC, RFC 9440, Forwarded) and those stripped
    upstream.py        Upstream (reaching the target), PlainStream (a plain connection)
    client.py          client mode: plain TCP in, mTLS out

Server mode is the server's connection protocol (:mod:`mtlskit.server.protocol`)
with the proxy's work over TLS: the TLS engines, the TLS state and its reload
(SIGHUP, file watch), the access rules, timeouts, drain and metrics are the
server's own.

Example::

    from mtlskit.proxy import ProxyConfig, Address, run_server
    from mtlskit.server import ServerConfig

    listener = ServerConfig(certs=Path("certs"), host="127.0.0.1", port=8443,
                            allow_cn=("client",))
    run_server(ProxyConfig(listener, target=Address.parse("127.0.0.1:5432", "--target")))
"""

from __future__ import annotations

from mtlskit.proxy.config import Address, ClientProxyConfig, ProxyConfig
from mtlskit.proxy.run import run_server

__all__ = ["Address", "ClientProxyConfig", "ProxyConfig", "run_server"]
