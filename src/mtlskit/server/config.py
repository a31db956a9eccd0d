"""The server's settings, parsed once (by the CLI or a caller) into a frozen object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mtlskit.errors import ConfigError
from mtlskit.server.asgi_types import ASGIApp

__all__ = ["SESSION_CACHE_BOUND", "ServerConfig"]


# Sessions the default TLS engine keeps per worker with stateful TLS 1.3 tickets: OpenSSL's
# own bound (SSL_SESSION_CACHE_MAX_SIZE_DEFAULT; oldest out first), as nginx's
# "ssl_session_cache builtin"; about 4.6 KiB each with a P-256 client certificate
# (+92 MiB of RSS when full, docs/bench.md). The bindings do not export the setter.
SESSION_CACHE_BOUND = 20480


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``mtlskit serve`` needs; the defaults are the seed's::

        ServerConfig()   # https://localhost:8443 on every interface, certs/ca.crt,
                         # certs/server.crt, certs/server.key, hello world

    Files: ``certs`` (``Path("certs")``) is the folder with ``ca.crt``, ``server.crt``
    and ``server.key``; ``ca``, ``cert``, ``key`` (None) override one file each;
    ``crl`` (None) refuses the clients a CRL revokes.

    Listening: ``host`` (``""``: every interface, IPv4 and IPv6, as Go's ``":8443"``;
    ``"127.0.0.1"`` for this machine only), ``port`` (8443; 0 picks a free one),
    ``workers`` (1; N processes share the port with SO_REUSEPORT), ``worker_affinity``
    (True: with several workers a client stays on one, by its IP address, and resumes its
    TLS session there), ``backlog`` (4096).

    What runs: ``app`` (None: the seed's hello world; ``"module:attribute"`` or an ASGI 3
    callable), ``quiet`` (False: one log line per request).

    Who may connect: every certificate the CA issued, unless ``allow_cn`` / ``allow_san``
    (``()``) list glob patterns (then the others get 403); ``client_cert``
    (``"required"``; ``"optional"`` for services with anonymous routes) and
    ``client_cert_any_purpose`` (False: a client certificate needs clientAuth when it has
    an extendedKeyUsage), ``client_ca_names`` (True: the CertificateRequest names the
    CAs of the CA bundle, on the default engine).

    Time limits, in seconds: ``handshake_timeout`` (10), ``head_timeout`` (10, to
    receive a request head), ``body_timeout`` (60, between two reads of a body),
    ``write_timeout`` (60, a client that does not read), ``idle_timeout`` (60, keep-alive
    connections with no request), ``shutdown_timeout`` (10, in-flight requests after
    SIGTERM). Request limits: ``max_header_bytes`` (32 KiB) and ``max_headers`` (100)
    answer 431 beyond, ``max_body_size`` (1 MiB) 413.

    WebSocket (ASGI apps): ``ws_max_size`` (16 MiB per message; 1009 beyond),
    ``ws_ping_interval`` (20 s of silence before a ping; 0: none) and ``ws_ping_timeout``
    (20 s for its pong).

    TLS state: ``watch_interval`` (1.0 s between looks at the files; 0: SIGHUP only),
    ``ticket_key_rotation`` (3600 s; 0: never), ``session_tickets`` (``"stateful"``:
    TLS 1.3 sessions kept in the worker; ``"stateless"``: carried by the client).

    Metrics: ``metrics_port`` (None: off) serves Prometheus text on ``metrics_host``
    (``"127.0.0.1"``); ``extra_metrics`` (None) adds text to it.
    """

    certs: Path = Path("certs")  # folder with ca.crt, server.crt, server.key
    ca: Path | None = None  # override certs/ca.crt
    cert: Path | None = None  # override certs/server.crt
    key: Path | None = None  # override certs/server.key
    crl: Path | None = None
    host: str = ""  # "" = every interface, as Go's ":8443"
    port: int = 8443
    # An ASGI app: "module:attribute" to import, or the app itself; None = hello world.
    app: str | ASGIApp | None = None
    quiet: bool = False  # no per-request log line
    workers: int = 1
    # With workers > 1: a client's connections go to one worker, chosen by its IP address,
    # so that it resumes its TLS session there (server/affinity.py).
    worker_affinity: bool = True
    allow_cn: tuple[str, ...] = ()
    allow_san: tuple[str, ...] = ()
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0  # keep-alive connections with no request in flight
    # From the first byte of a request to the end of its head (nginx's client_header_timeout).
    head_timeout: float = 10.0
    # Between two reads of a request body the server waits for (nginx's client_body_timeout).
    body_timeout: float = 60.0
    # A response the client does not read: no progress in writing it (nginx's send_timeout).
    write_timeout: float = 60.0
    # Request bodies larger than this are refused with 413 (0: no limit); nginx's default.
    max_body_size: int = 1024 * 1024
    # WebSocket: the largest message (uvicorn's default), and how often the server pings a
    # quiet peer (0: never) and waits for its pong (uvicorn's defaults).
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    shutdown_timeout: float = 10.0  # how long in-flight requests may run after SIGTERM
    max_header_bytes: int = 32 * 1024  # request line + headers (431 beyond)
    max_headers: int = 100  # header fields per request (431 beyond)
    backlog: int = 4096
    watch_interval: float = 1.0  # seconds between looks at the files (0: SIGHUP only)
    ticket_key_rotation: float = 3600.0  # seconds a TLS session ticket key lives (0: never)
    # TLS 1.3 resumption on the default engine: "stateful" tickets name a session kept in
    # the worker (faster, up to SESSION_CACHE_BOUND sessions), "stateless" ones carry it
    # encrypted (no server memory). The stdlib engine's tickets are always stateless.
    session_tickets: Literal["stateful", "stateless"] = "stateful"
    metrics_port: int | None = None  # Prometheus text on this plain-HTTP port
    metrics_host: str = "127.0.0.1"
    # "optional": a client without a certificate gets through the handshake (an app
    # then sees an empty client_cert_chain); one that sends a certificate is verified.
    # For services with anonymous routes (mtlskit ca serve), never a CLI flag of serve.
    client_cert: Literal["required", "optional"] = "required"
    # Accept a client certificate without clientAuth in its extendedKeyUsage (the chain is
    # still verified): the CA service renews server-only certificates over mTLS. The
    # default TLS engine only; the stdlib engine keeps OpenSSL's purpose check.
    client_cert_any_purpose: bool = False
    # Name the CAs of the CA bundle in the CertificateRequest (the default engine; the
    # stdlib ssl module cannot): False for a bundle too large to send in every handshake.
    client_ca_names: bool = True
    # More Prometheus text for the metrics port (the CA service's own metrics).
    extra_metrics: Callable[[], str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is out of range", hint="use 1-65535")
        if self.watch_interval < 0:
            raise ConfigError("--watch-interval must be 0 (off) or more seconds")
        if self.session_tickets not in ("stateful", "stateless"):
            raise ConfigError(
                f"--session-tickets must be stateful or stateless, not {self.session_tickets!r}"
            )
        if self.ticket_key_rotation < 0:
            raise ConfigError("--ticket-key-rotation must be 0 (off) or more seconds")
        if self.metrics_port is not None and not 0 < self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {self.metrics_port} is out of range")
        if self.client_cert not in ("required", "optional"):
            raise ConfigError(
                f"client_cert must be 'required' or 'optional', not {self.client_cert!r}"
            )
        if self.workers < 1:
            raise ConfigError("--workers must be 1 or more")
        if self.max_body_size < 0:
            raise ConfigError("--max-body-size must be 0 (no limit) or more bytes")
        if self.ws_max_size < 1:
            raise ConfigError("--ws-max-size must be 1 or more bytes")
        if self.ws_ping_interval < 0:
            raise ConfigError("--ws-ping-interval must be 0 (off) or more seconds")
        for name in (
            "handshake_timeout",
            "idle_timeout",
            "head_timeout",
            "body_timeout",
            "write_timeout",
            "ws_ping_timeout",
            "shutdown_timeout",
        ):
            if getattr(self, name) <= 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be more than 0 seconds")

    @property
    def ca_path(self) -> Path:
        return self.ca or self.certs / "ca.crt"

    @property
    def cert_path(self) -> Path:
        return self.cert or self.certs / "server.crt"

    @property
    def key_path(self) -> Path:
        return self.key or self.certs / "server.key"

    @property
    def url(self) -> str:
        """``https://localhost:8443`` as the seed logs it (":8443" shows as localhost)."""
        host = self.host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"
