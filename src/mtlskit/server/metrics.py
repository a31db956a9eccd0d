"""Prometheus text on a separate plain-HTTP port: ``serve --metrics-port 9100``.

::

    mtlskit_handshakes_total{outcome="failed",reason="cert_revoked"} 3
    mtlskit_open_connections 12
    mtlskit_certificate_expiry_timestamp_seconds{role="server",subject="CN=localhost"} 1.8e9
    mtlskit_crl_next_update_timestamp_seconds 1.79e9

Expiry is exported as a timestamp (the Prometheus convention: alert on
``mtlskit_certificate_expiry_timestamp_seconds - time() < 14 * 86400``) and, for
dashboards without PromQL, as seconds left. The values describe the state the
server is *serving*, not the files on disk: a refused replacement does not
change them, ``mtlskit_tls_reload_last_ok`` goes to 0.

The port speaks just enough HTTP/1.1 for a scraper (``GET /metrics``, one
request per connection) and binds 127.0.0.1 unless told otherwise: the numbers
say who connects and when certificates expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator, Callable, Iterable

from mtlskit.errors import ServerError
from mtlskit.server.reload import facts_of
from mtlskit.server.stats import Stats
from mtlskit.server.tlsstate import ContextHolder

__all__ = ["CONTENT_TYPE", "render", "serve_metrics", "start_metrics_server"]

log = logging.getLogger("mtlskit.server")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_REQUEST = 8192
_TIMEOUT = 5.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Exposition:
    """The lines of the text exposition, one metric (HELP, TYPE, samples) at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")


def render(stats: Stats, holder: ContextHolder | None = None, *, now: float | None = None) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``stats`` and ``holder``'s state."""
    now = time.time() if now is None else now
    snap = stats.snapshot()
    out = _Exposition()
    failures: dict[str, int] = snap["handshake_failures"]
    out.metric(
        "mtlskit_handshakes_total",
        "counter",
        "TLS handshakes by outcome, and failures by reason.",
        [({"outcome": "ok", "reason": ""}, snap["handshakes_ok"])]
        + [({"outcome": "failed", "reason": r}, n) for r, n in sorted(failures.items())],
    )
    out.metric(
        "mtlskit_requests_total",
        "counter",
        "HTTP requests: answered by the app, refused (403, no allow rule), bad (400/431).",
        [
            ({"result": "ok"}, snap["requests"]),
            ({"result": "refused"}, snap["requests_refused"]),
            ({"result": "bad"}, snap["bad_requests"]),
        ],
    )
    out.metric(
        "mtlskit_connections_total",
        "counter",
        "Accepted connections.",
        [({}, snap["connections_total"])],
    )
    out.metric(
        "mtlskit_open_connections",
        "gauge",
        "Connections open now.",
        [({}, snap["open_connections"])],
    )
    out.metric(
        "mtlskit_tls_reloads_total",
        "counter",
        "Reloads of the certificate, key, CA bundle and CRL, by result.",
        [({"result": "ok"}, snap["reloads_ok"]), ({"result": "failed"}, snap["reloads_failed"])],
    )
    out.metric(
        "mtlskit_upstream_connections_total",
        "counter",
        "Connections mtlskit proxy opened to its target, by result (failed: refused, "
        "unreachable, timed out).",
        [
            ({"result": "ok"}, snap["upstream_ok"]),
            ({"result": "failed"}, snap["upstream_failed"]),
        ],
    )
    if holder is not None:
        _state_metrics(out, holder, now)
    return "\n".join(out.lines) + "\n"


def _state_metrics(out: _Exposition, holder: ContextHolder, now: float) -> None:
    state = holder.current
    out.metric(
        "mtlskit_tls_reload_last_ok",
        "gauge",
        "1 when the last reload succeeded (or none failed), 0 while a broken file is refused.",
        [({}, 0 if holder.last_error is not None else 1)],
    )
    out.metric(
        "mtlskit_tls_loaded_timestamp_seconds",
        "gauge",
        "When the TLS state being served was loaded.",
        [({}, state.loaded_at)],
    )
    try:
        facts = facts_of(state)
    except Exception as exc:  # a scrape must not fail because a file vanished
        log.debug("no expiry metrics: %s", exc)
        return
    certs = [("server", facts.server_cert)] + [("ca", c) for c in facts.ca_certs]
    expiry = [
        ({"role": role, "subject": c.subject.rfc4514_string()}, c.not_valid_after_utc.timestamp())
        for role, c in certs
    ]
    out.metric(
        "mtlskit_certificate_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the server certificate and of each CA certificate trusted for clients.",
        expiry,
    )
    out.metric(
        "mtlskit_certificate_expiry_seconds",
        "gauge",
        "Seconds until notAfter (negative once expired).",
        [(labels, round(ts - now, 3)) for labels, ts in expiry],
    )
    crl = facts.crl
    if crl is not None and crl.next_update_utc is not None:
        nxt = crl.next_update_utc.timestamp()
        out.metric(
            "mtlskit_crl_next_update_timestamp_seconds",
            "gauge",
            "nextUpdate of the CRL in use: past it, OpenSSL refuses every client.",
            [({}, nxt)],
        )
        out.metric(
            "mtlskit_crl_next_update_seconds",
            "gauge",
            "Seconds until the CRL's nextUpdate.",
            [({}, round(nxt - now, 3))],
        )
        out.metric(
            "mtlskit_crl_revoked_certificates",
            "gauge",
            "Entries in the CRL in use.",
            [({}, len(crl))],
        )


async def _handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: Stats,
    holder: ContextHolder | None,
    extra: Callable[[], str] | None = None,
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _TIMEOUT)
        parts = head.split(b"\r\n", 1)[0].split()
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
        if method not in (b"GET", b"HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"use GET /metrics\n", "text/plain"
        elif path.split(b"?")[0] == b"/metrics":
            text = render(stats, holder) + (extra() if extra is not None else "")
            status, body, ctype = "200 OK", text.encode(), CONTENT_TYPE
        else:
            status, body, ctype = "404 Not Found", b"metrics are at /metrics\n", "text/plain"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + (body if method != b"HEAD" else b"")
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass  # a scraper that went away or sent nonsense: nothing worth a log line
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve_metrics(
    host: str,
    port: int | None,
    stats: Stats,
    holder: ContextHolder | None = None,
    *,
    extra: Callable[[], str] | None = None,
) -> AsyncIterator[asyncio.Server | None]:
    """Serve metrics while the block runs (``port`` None: no metrics); ``extra`` adds
    more Prometheus text after the server's own (the CA service's metrics).

    With ``--workers N`` every worker counts its own connections, so worker *i*
    serves its numbers on ``port + i`` (scrape them all; sum in PromQL).
    """
    if port is None:
        yield None
        return
    name = multiprocessing.current_process().name  # "worker-3" under the supervisor
    if name.startswith("worker-") and name[7:].isdigit():
        port += int(name[7:])
    try:
        server = await start_metrics_server(host, port, stats, holder, extra=extra)
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise ServerError(
            f"cannot listen for metrics on {host}:{port}: {why}",
            hint="choose another --metrics-port",
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def start_metrics_server(
    host: str,
    port: int,
    stats: Stats,
    holder: ContextHolder | None = None,
    *,
    extra: Callable[[], str] | None = None,
) -> asyncio.Server:
    """Serve ``GET /metrics`` on ``host:port`` until the returned server is closed."""
    return await asyncio.start_server(
        lambda r, w: _handle(r, w, stats, holder, extra), host, port, limit=_MAX_REQUEST
    )
