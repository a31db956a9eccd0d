"""Start, serve, drain: one worker's event loop, and the supervisor of ``--workers N``.

``run(config)`` is what ``mtlskit serve`` calls. It checks everything that can be
checked before serving (certificate files, key match, the app import, the port)
and raises :class:`~mtlskit.errors.MtlsError` for each, so the CLI prints one
line. With ``--workers N`` it forks N processes that each listen on the port
with SO_REUSEPORT (the kernel spreads connections), forwards SIGINT/SIGTERM/SIGHUP
to them and waits.

SIGINT/SIGTERM stop accepting, close idle connections with close_notify, let
in-flight requests finish (up to ``shutdown_timeout``), run the ASGI lifespan
shutdown, then return.

uvloop is imported by :func:`run` only, when it installs it: it takes longer to import
than the rest of the server, and an app that embeds :class:`Server` keeps its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for_sentinels
from typing import Any

from mtlskit.errors import ServerError
from mtlskit.identity import AccessPolicy
from mtlskit.logs import log_to_stderr
from mtlskit.server.affinity import attach_client_affinity
from mtlskit.server.asgi import ASGIProtocol, HostedApp, Lifespan, load_app
from mtlskit.server.asgi_types import ASGIApp
from mtlskit.server.config import ServerConfig
from mtlskit.server.metrics import serve_metrics
from mtlskit.server.protocol import HelloProtocol, HelloResponses
from mtlskit.server.reload import checked_build, watch_files
from mtlskit.server.state import ConnectionRules, ServerState
from mtlskit.server.stats import Stats
from mtlskit.server.tlsstate import (
    ContextHolder,
    TLSState,
    default_engine_selected,
    engine_description,
)

if sys.platform != "win32":
    import resource

__all__ = ["Server", "run"]

log = logging.getLogger("mtlskit.server")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Makes the protocol of each accepted connection; the default serves HTTP (hello world or
# the app), the proxy passes its own (mtlskit.proxy). The protocol registers itself in
# the ServerState as a Connection, which the sweeper and the drain act on.
ProtocolFactory = Callable[[ServerState, ConnectionRules, TLSState], asyncio.Protocol]


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Server:
    """One worker: listening sockets, connections, the sweeper, the lifespan."""

    def __init__(
        self,
        config: ServerConfig,
        holder: ContextHolder,
        *,
        app: ASGIApp | None = None,
        stats: Stats | None = None,
        protocol: ProtocolFactory | None = None,
    ) -> None:
        self.config = config
        self.protocol = protocol
        self.holder = holder
        self.stats = stats if stats is not None else holder.stats
        self.state = ServerState(self.stats)
        self.rules = ConnectionRules.from_config(config)
        # The app, or the built-in hello world when there is none.
        self.hosted = HostedApp(app) if app is not None else None
        self.hello = HelloResponses(self.state.date) if app is None else None
        self._servers: list[asyncio.AbstractServer] = []
        self._stop: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._lifespan: Lifespan | None = None
        self.sockets: list[socket.socket] = []

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.sockets[0].getsockname()[1]) if self.sockets else self.config.port

    async def start(self, *, reuse_port: bool = False) -> None:
        """Run the lifespan startup, then listen."""
        if self.hosted is not None:
            self._lifespan = Lifespan(self.hosted.app, self.hosted.lifespan_state)
            await self._lifespan.startup()
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        factory = self._protocol_factory()

        try:
            server = await loop.create_server(
                factory,
                host=self.config.host or None,
                port=self.config.port,
                backlog=self.config.backlog,
                reuse_port=reuse_port or None,
            )
        except OSError as exc:
            raise _listen_error(self.config, exc) from None
        self._servers.append(server)
        self.sockets = [s for srv in self._servers for s in getattr(srv, "sockets", ())]
        if reuse_port and self.config.workers > 1 and self.config.worker_affinity:
            self._keep_clients_on_one_worker()
        self._sweeper = loop.create_task(self._sweep())

    def _keep_clients_on_one_worker(self) -> None:
        """Steer the port's SO_REUSEPORT group by client address (server/affinity.py)."""
        for sock in self.sockets:
            try:
                attach_client_affinity(sock, self.config.workers)
            except OSError as exc:
                log.warning(
                    "cannot keep each client on one worker (%s): a client resumes its "
                    "TLS session 1 time in %d",
                    exc.strerror or exc,
                    self.config.workers,
                )
                return

    def _protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """Called at each accept: the connection handshakes with the TLS state current then."""
        state, rules, holder, hosted, hello = (
            self.state,
            self.rules,
            self.holder,
            self.hosted,
            self.hello,
        )
        protocol = self.protocol
        if protocol is not None:
            return lambda: protocol(state, rules, holder.current)
        if hosted is not None:
            return lambda: ASGIProtocol(state, rules, holder.current, hosted)
        assert hello is not None
        return lambda: HelloProtocol(state, rules, holder.current, hello)

    async def _sweep(self) -> None:
        """Every interval: the coarse clock, the Date header, handshake timeouts, and each
        connection's own (idle, request head, request body, write: check_timeouts)."""
        cfg = self.config
        timeouts = [cfg.handshake_timeout, cfg.idle_timeout, cfg.head_timeout]
        timeouts += [cfg.body_timeout, cfg.write_timeout, cfg.ws_ping_timeout]
        timeouts += [cfg.ws_ping_interval] if cfg.ws_ping_interval else []
        interval = max(0.05, min(1.0, *(t / 4 for t in timeouts)))
        state = self.state
        while True:
            await asyncio.sleep(interval)
            state.tick()
            if self.hello is not None:
                self.hello.refresh(state.date)
            now = state.now
            hs_deadline = now - cfg.handshake_timeout
            for conn in list(state.connections):
                if conn.closed:
                    continue
                if conn.handshaking:
                    if conn.started < hs_deadline:
                        conn.handshake_timed_out()
                else:
                    conn.check_timeouts(now)

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def serve(self, *, install_signals: bool = True, announce: str | None = None) -> None:
        """Serve until :meth:`request_stop` (or SIGINT/SIGTERM), then drain.

        ``announce`` (the ``listen on …`` line) is logged once the signal handlers are in
        place, so a SIGTERM sent as soon as that line appears is a graceful stop.
        """
        assert self._stop is not None, "call start() first"
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in _STOP_SIGNALS:
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.holder.try_reload)
        if announce:
            log.info("%s", engine_description())
            log.info("%s", announce)
        try:
            await self._stop.wait()
        finally:
            if install_signals:
                for sig in (*_STOP_SIGNALS, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, finish in-flight requests, close every connection."""
        state = self.state
        state.draining = True
        for srv in self._servers:
            srv.close()
        state.all_closed = asyncio.Event()
        for conn in list(state.connections):
            conn.shutdown_if_idle()
        if not state.connections:
            state.all_closed.set()
        try:
            await asyncio.wait_for(state.all_closed.wait(), self.config.shutdown_timeout)
        except TimeoutError:
            log.warning(
                "shutdown: closing %d connections still busy after %gs",
                len(state.connections),
                self.config.shutdown_timeout,
            )
            for conn in list(state.connections):
                conn.abort()
        if self.hosted is not None:
            await self.hosted.wait_requests(self.config.shutdown_timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for srv in self._servers:
            await srv.wait_closed()
        if self._lifespan is not None:
            await self._lifespan.shutdown()


def _listen_error(config: ServerConfig, exc: OSError) -> ServerError:
    where = f"{config.host or '*'}:{config.port}"
    if exc.errno == errno.EADDRINUSE:
        return ServerError(
            f"cannot listen on {where}: the port is in use",
            hint="stop the other server or choose another --port",
        )
    if exc.errno == errno.EACCES:
        return ServerError(
            f"cannot listen on {where}: permission denied",
            hint="use a port above 1023",
        )
    return ServerError(
        f"cannot listen on {where}: {exc.strerror or exc}", hint="check --host and --port"
    )


def prepare(config: ServerConfig) -> tuple[ContextHolder, ASGIApp | None]:
    """Load the certificates and the app: every error here is one line for the CLI."""
    AccessPolicy(config.allow_cn, config.allow_san)  # validates the patterns
    # checked_build also refuses an expired certificate or a CRL of another key (reload.py).
    holder = ContextHolder(
        config.cert_path,
        config.key_path,
        config.ca_path,
        crl=config.crl,
        build=checked_build,
        stateful_tickets=config.session_tickets == "stateful",
        require_client_cert=config.client_cert == "required",
        any_client_purpose=config.client_cert_any_purpose,
        client_ca_names=config.client_ca_names,
    )
    if not default_engine_selected():
        _note_stdlib_engine(config)
    app = load_app(config.app) if isinstance(config.app, str) else config.app
    return holder, app


def _note_stdlib_engine(config: ServerConfig) -> None:
    """Say at start-up what the stdlib ssl engine cannot do that the default one does."""
    if config.client_ca_names:
        log.warning(
            "the stdlib TLS engine sends no CA names in the CertificateRequest (the ssl "
            "module cannot set them): clients that hold several certificates may offer "
            "the wrong one"
        )
    if config.crl is not None:
        log.warning(
            "the stdlib TLS engine checks the CRL with OpenSSL's X509 store: each full "
            "handshake costs more the more entries the CRL has"
        )


async def _serve_worker(
    config: ServerConfig,
    holder: ContextHolder,
    app: ASGIApp | None,
    *,
    reuse_port: bool,
    announce: str | None,
    protocol: ProtocolFactory | None = None,
) -> None:
    server = Server(config, holder, app=app, protocol=protocol)
    await server.start(reuse_port=reuse_port)
    async with (
        watch_files(holder, config.watch_interval, rotate_every=config.ticket_key_rotation),
        serve_metrics(
            config.metrics_host,
            config.metrics_port,
            server.stats,
            holder,
            extra=config.extra_metrics,
        ),
    ):
        await server.serve(announce=announce)


def _raise_open_files_limit() -> None:
    """Each connection is a file descriptor: allow as many as the hard limit lets us."""
    if sys.platform == "win32":  # pragma: no cover - no resource module there
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # pragma: no cover - not fatal
        pass


def run(
    config: ServerConfig,
    *,
    protocol: ProtocolFactory | None = None,
    banner: str | None = None,
    holder: ContextHolder | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM: what ``mtlskit serve`` does.

    ``protocol`` replaces the HTTP protocol of each connection (the proxy's); ``banner``
    the ``listen on …`` line logged once listening; ``holder`` the TLS state built from
    ``config``'s files (the proxy's client mode holds a client's).

    It logs what the command line logs (``listen on …``, one line per request and per
    refused handshake) to stderr, unless the program has configured logging itself:
    then the lines go to the ``mtlskit.server`` logger, at INFO, like any other.
    """
    log_to_stderr(unless_configured=True)
    if holder is None:
        holder, app = prepare(config)
    else:
        app = None
    _raise_open_files_limit()
    _install_uvloop()
    if config.workers == 1:
        announce = banner or f"listen on {config.url}"
        asyncio.run(
            _serve_worker(
                config, holder, app, reuse_port=False, announce=announce, protocol=protocol
            )
        )
        return
    _supervise(config, holder, app, protocol=protocol, banner=banner)


def _check_port(config: ServerConfig) -> socket.socket:
    """Bind (without listening) to fail early and clearly when the port is taken."""
    infos = socket.getaddrinfo(
        config.host or None, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise _listen_error(config, exc) from None
    return sock


def _worker_main(
    config: ServerConfig,
    holder: ContextHolder,
    app: ASGIApp | None,
    probe: socket.socket,
    protocol: ProtocolFactory | None = None,
) -> None:
    probe.close()  # the supervisor's port check, inherited by fork
    for sig in (*_STOP_SIGNALS, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _install_uvloop()
    try:
        asyncio.run(
            _serve_worker(config, holder, app, reuse_port=True, announce=None, protocol=protocol)
        )
    except ServerError as exc:
        log.error("error: %s", exc.one_line())
        sys.exit(1)


def _supervise(
    config: ServerConfig,
    holder: ContextHolder,
    app: ASGIApp | None,
    *,
    protocol: ProtocolFactory | None = None,
    banner: str | None = None,
) -> None:
    probe = _check_port(config)
    # Fork (not spawn): the workers inherit the loaded app and contexts. Nothing runs
    # an event loop or a thread in this process yet.
    mp = multiprocessing.get_context("fork")
    workers = [
        mp.Process(
            target=_worker_main, args=(config, holder, app, probe, protocol), name=f"worker-{i}"
        )
        for i in range(config.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum in _STOP_SIGNALS:
            stopping = True
        for w in workers:
            if w.pid is not None and w.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM if signum in _STOP_SIGNALS else signum)

    previous = {sig: signal.signal(sig, forward) for sig in (*_STOP_SIGNALS, signal.SIGHUP)}
    try:
        for w in workers:
            w.start()
        probe.close()
        log.info("%s", engine_description())
        log.info("%s (%d workers)", banner or f"listen on {config.url}", config.workers)
        failed = 0
        while any(w.exitcode is None for w in workers):
            wait_for_sentinels([w.sentinel for w in workers if w.exitcode is None], timeout=1.0)
            for w in workers:
                if w.exitcode not in (None, 0) and not stopping:
                    failed = w.exitcode or 1
                    stopping = True
                    forward(signal.SIGTERM, None)
        for w in workers:
            w.join()
        if failed:
            raise ServerError(
                f"a worker stopped unexpectedly (exit code {failed})", hint="see the log above"
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
