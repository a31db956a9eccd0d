"""The proxy's settings, parsed once into frozen objects, every rule checked here.

::

    Address           HOST:PORT, [IPv6]:PORT or unix:PATH, and whether it stays on this machine
    ProxyConfig       server mode: mTLS in, plain out (L4, or L7 with --http)
    ClientProxyConfig client mode: plain in, mTLS out

Safe by default, as ghostunnel: server mode needs an explicit access rule
(``--allow-all`` to admit every certificate the CA verifies) and a target on this
machine (a loopback address or a unix socket) unless ``--unsafe-target``; client
mode listens on loopback unless ``--unsafe-listen`` (whoever reaches its port uses
its certificate). A listening address always names its host: ``:8443`` is refused,
``0.0.0.0:8443`` says "every interface" out loud.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mtlskit.errors import ConfigError
from mtlskit.server.config import ServerConfig

__all__ = [
    "XFCC_FIELDS",
    "Address",
    "ClientProxyConfig",
    "ProxyConfig",
]

# Envoy's names and order (x-forwarded-client-cert, "forward_client_cert_details").
XFCC_FIELDS = ("By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS")
XFCC_DEFAULT = ("Hash", "Subject", "URI", "DNS")


@dataclass(frozen=True)
class Address:
    """Where to listen or connect: a host and port, or a unix socket path."""

    host: str = ""
    port: int = 0
    path: Path | None = None  # unix socket

    @classmethod
    def parse(cls, text: str, flag: str, *, unix: bool = True) -> Address:
        """``HOST:PORT``, ``[::1]:PORT`` or (with ``unix``) ``unix:PATH``."""
        if text.startswith("unix:"):
            if not unix:
                raise ConfigError(f"{flag} {text}: a unix socket is not possible here")
            if not text[5:]:
                raise ConfigError(f"{flag} unix: needs a path", hint="e.g. unix:/run/app.sock")
            return cls(path=Path(text[5:]))
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise ConfigError(
                f"{flag} {text!r} is not HOST:PORT",
                hint="e.g. 127.0.0.1:8443, [::1]:8443" + (" or unix:PATH" if unix else ""),
            )
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise ConfigError(
                f"{flag} {text!r} names no host",
                hint=f"say 127.0.0.1{text} for this machine, or 0.0.0.0{text} for every interface",
            )
        return cls(host=host, port=int(port_text))

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def is_local(self) -> bool:
        """A unix socket, ``localhost`` or a loopback address: never leaves this machine."""
        if self.path is not None or self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a name: it may resolve anywhere

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """``mtlskit proxy server``: terminate mTLS, forward to ``target``.

    ``listener`` carries what the proxy shares with ``mtlskit serve``: the certificate
    files, the access rules, the timeouts, reload and metrics.
    """

    listener: ServerConfig
    target: Address
    allow_all: bool = False
    http: bool = False  # L7: parse HTTP/1.1, pass the identity in headers
    proxy_protocol: bool = False  # L4: a PROXY protocol v2 header first
    xfcc_fields: tuple[str, ...] = XFCC_DEFAULT
    connect_timeout: float = 5.0
    max_connections: int = 4096
    backend_keepalive: int = 32  # idle connections to the target kept for reuse (L7)
    unsafe_target: bool = False

    def __post_init__(self) -> None:
        cfg = self.listener
        if self.allow_all and (cfg.allow_cn or cfg.allow_san):
            raise ConfigError(
                "--allow-all cannot be combined with --allow-cn or --allow-san",
                hint="keep the rules, or --allow-all alone",
            )
        if not self.allow_all and not (cfg.allow_cn or cfg.allow_san):
            raise ConfigError(
                "an access rule is required",
                hint="add --allow-cn PATTERN, --allow-san PATTERN, or --allow-all to admit "
                "every certificate the CA verifies",
            )
        if not self.target.is_local and not self.unsafe_target:
            raise ConfigError(
                f"--target {self.target} is not on this machine: the bytes would leave it "
                "unencrypted",
                hint="use a loopback address or unix:PATH, or add --unsafe-target",
            )
        if self.http and self.proxy_protocol:
            raise ConfigError(
                "--proxy-protocol is for L4: with --http the identity goes in headers",
                hint="drop one of them",
            )
        unknown = [f for f in self.xfcc_fields if f not in XFCC_FIELDS]
        if unknown or not self.xfcc_fields:
            raise ConfigError(
                f"--xfcc-fields: unknown field {', '.join(unknown) or '(none given)'}",
                hint="choose from " + ",".join(XFCC_FIELDS),
            )
        if self.connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be more than 0 seconds")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be 1 or more")
        if self.backend_keepalive < 0:
            raise ConfigError("--backend-keepalive must be 0 (no reuse) or more connections")
        if cfg.client_cert != "required":
            raise ConfigError("the proxy requires client certificates", hint="leave client_cert")
        if cfg.workers != 1:
            raise ConfigError("the proxy runs one process", hint="leave workers at 1")

    @property
    def mode(self) -> str:
        return "L7 HTTP" if self.http else "L4" + (" + PROXY v2" if self.proxy_protocol else "")

    @property
    def banner(self) -> str:
        return f"proxy {self.listener.url} -> {self.target} ({self.mode})"


@dataclass(frozen=True)
class ClientProxyConfig:
    """``mtlskit proxy client``: accept plain TCP, forward over mTLS to ``target``."""

    listen: Address
    target: Address
    certs: Path = Path("certs")  # ca.crt, client.crt, client.key (the seed's layout)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # verified in the server's certificate [target's host]
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    idle_timeout: float = 600.0
    shutdown_timeout: float = 10.0
    max_connections: int = 4096
    watch_interval: float = 1.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    unsafe_listen: bool = False

    def __post_init__(self) -> None:
        if self.target.is_unix or self.listen.is_unix:
            raise ConfigError("the client mode listens on HOST:PORT and connects to HOST:PORT")
        if not self.listen.is_local and not self.unsafe_listen:
            raise ConfigError(
                f"--listen {self.listen} is reachable from other machines, and whoever "
                "connects uses this client's certificate",
                hint="listen on 127.0.0.1, or add --unsafe-listen",
            )
        for name in ("connect_timeout", "handshake_timeout", "idle_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be more than 0 seconds")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be 1 or more")
        if self.watch_interval < 0:
            raise ConfigError("--watch-interval must be 0 (off) or more seconds")

    @property
    def ca_path(self) -> Path:
        return self.ca or self.certs / "ca.crt"

    @property
    def cert_path(self) -> Path:
        return self.cert or self.certs / "client.crt"

    @property
    def key_path(self) -> Path:
        return self.key or self.certs / "client.key"

    @property
    def name_to_verify(self) -> str:
        return self.server_name or self.target.host

    @property
    def banner(self) -> str:
        return (
            f"proxy client {self.listen} -> {self.target} (mTLS, verifying {self.name_to_verify!r})"
        )
