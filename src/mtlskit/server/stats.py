"""Counters of one server process, kept in one small object so they can be exported.

The hot path only increments plain attributes; :meth:`Stats.snapshot` turns them
into a dict (for Prometheus text, JSON or tests). With ``--workers N`` every
worker process has its own :class:`Stats`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["HANDSHAKE_FAILURE_REASONS", "Stats"]

# Stable, low-cardinality labels for handshake failures (see engine.failure_from_ssl_error).
HANDSHAKE_FAILURE_REASONS = (
    "no_client_cert",
    "cert_untrusted",
    "cert_expired",
    "cert_not_yet_valid",
    "cert_purpose",
    "cert_revoked",
    "cert_invalid",
    "crl",
    "peer_alert",
    "not_tls",
    "old_protocol",
    "protocol",
    "eof",
    "timeout",
    "internal",
)


class Stats:
    """Handshakes by outcome, requests by result, open connections, reloads, and the
    proxy's connections to its target."""

    __slots__ = (
        "bad_requests",
        "connections_total",
        "handshake_failures",
        "handshakes_ok",
        "open_connections",
        "reloads_failed",
        "reloads_ok",
        "requests",
        "requests_refused",
        "upstream_failed",
        "upstream_ok",
    )

    def __init__(self) -> None:
        self.connections_total = 0
        self.open_connections = 0
        self.handshakes_ok = 0
        self.handshake_failures: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURE_REASONS, 0)
        self.requests = 0  # requests answered by the app (not refused, not malformed)
        self.requests_refused = 0  # 403: the client's identity matched no allow rule
        self.bad_requests = 0  # 400/431: malformed or oversized requests
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.upstream_ok = 0  # the proxy's connections to its target: opened
        self.upstream_failed = 0  # … and failed (refused, unreachable, timed out)

    def handshake_failed(self, reason: str) -> None:
        self.handshake_failures[reason] = self.handshake_failures.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A copy of every counter, safe to serialise."""
        return {
            "connections_total": self.connections_total,
            "open_connections": self.open_connections,
            "handshakes_ok": self.handshakes_ok,
            "handshake_failures": dict(self.handshake_failures),
            "requests": self.requests,
            "requests_refused": self.requests_refused,
            "bad_requests": self.bad_requests,
            "reloads_ok": self.reloads_ok,
            "reloads_failed": self.reloads_failed,
            "upstream_ok": self.upstream_ok,
            "upstream_failed": self.upstream_failed,
        }
