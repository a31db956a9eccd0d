"""What one worker's connections share, one object per concern (cf. uvicorn's ServerState).

::

    ServerState      what changes while the worker runs: the open connections, whether
                     it is draining, the coarse clock and the Date header, the counters
    ConnectionRules  what every connection enforces, read once from ServerConfig: the
                     access rules, the request limits and timeouts, whether requests
                     are logged

The TLS state a connection handshakes with comes from the
:class:`~mtlskit.server.tlsstate.ContextHolder` at accept time; the app a worker
hosts is :class:`~mtlskit.server.asgi.HostedApp`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Protocol

from mtlskit.identity import AccessPolicy
from mtlskit.server.config import ServerConfig
from mtlskit.server.stats import Stats
from mtlskit.server.websocket import WebSocketLimits

__all__ = ["AcceptedConnection", "ConnectionRules", "ServerState"]


class AcceptedConnection(Protocol):
    """What the worker needs of a connection to sweep and drain it
    (:class:`mtlskit.server.protocol.BaseProtocol` is one)."""

    closed: bool
    handshaking: bool
    started: float

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def shutdown_if_idle(self) -> None: ...

    def handshake_timed_out(self) -> None: ...

    def check_timeouts(self, now: float) -> None:
        """After the handshake: close what waits too long on the peer (idle, a request
        head or body that stalls, a response it does not read)."""


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """What every connection enforces: who may send requests, how large a request may
    be, how long the peer may keep it waiting, whether each request gets a log line."""

    policy: AccessPolicy
    check_access: bool  # False when the policy lets every verified client in
    max_header_bytes: int
    max_headers: int
    max_body_size: int  # 0: no limit
    idle_timeout: float
    head_timeout: float
    body_timeout: float
    write_timeout: float
    websocket: WebSocketLimits
    quiet: bool

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionRules:
        policy = AccessPolicy(config.allow_cn, config.allow_san)
        return cls(
            policy=policy,
            check_access=not policy.allows_everyone,
            max_header_bytes=config.max_header_bytes,
            max_headers=config.max_headers,
            max_body_size=config.max_body_size or 1 << 62,
            idle_timeout=config.idle_timeout,
            head_timeout=config.head_timeout,
            body_timeout=config.body_timeout,
            write_timeout=config.write_timeout,
            websocket=WebSocketLimits(
                max_size=config.ws_max_size,
                ping_interval=config.ws_ping_interval,
                ping_timeout=config.ws_ping_timeout,
            ),
            quiet=config.quiet,
        )


class ServerState:
    """One worker's open connections, its draining flag, its coarse clock and counters."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.connections: set[AcceptedConnection] = set()
        self.draining = False
        self.all_closed: asyncio.Event | None = None  # set by the lifecycle while draining
        self.now = 0.0
        self.date = b""
        self.tick()

    def tick(self) -> None:
        """Once per sweep (≤ 1 s): the coarse clock and the cached Date header value."""
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode()

    def connection_opened(self, conn: AcceptedConnection) -> None:
        self.connections.add(conn)
        stats = self.stats
        stats.connections_total += 1
        stats.open_connections += 1

    def connection_closed(self, conn: AcceptedConnection) -> None:
        self.connections.discard(conn)
        self.stats.open_connections -= 1
        if self.all_closed is not None and not self.connections:
            self.all_closed.set()
