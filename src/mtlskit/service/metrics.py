"""The CA service's Prometheus metrics, after the server's own on ``--metrics-port``.

::

    mtlskit_ca_issuances_total{route="enroll",outcome="issued"} 12
    mtlskit_ca_issuances_total{route="renew",outcome="refused"} 1
    mtlskit_acme_requests_total{type="new-order",outcome="ok"} 40
    mtlskit_acme_validation_seconds_bucket{le="0.1"} 38
    mtlskit_ca_db_errors_total 0
    mtlskit_ca_certificate_expiry_timestamp_seconds 2.1e9
    mtlskit_ca_crl_next_update_timestamp_seconds 1.79e9

Counters are kept per process under one lock (endpoints run in a thread pool);
the expiry gauges follow what the service serves.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["VALIDATION_BUCKETS", "ServiceMetrics"]

# Seconds: an http-01 or tls-alpn-01 validation is one connection (to a local
# name usually well under 100 ms; a timeout at the top end).
VALIDATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class ServiceMetrics:
    """Counters, one histogram and two gauges; :meth:`render` is Prometheus text 0.0.4."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issuances: Counter[tuple[str, str]] = Counter()
        self._acme: Counter[tuple[str, str]] = Counter()
        self._buckets = [0] * len(VALIDATION_BUCKETS)
        self._validation_count = 0
        self._validation_sum = 0.0
        self._db_errors = 0
        self.ca_not_after: float | None = None  # UNIX time
        self.crl_next_update: float | None = None

    def count_issuance(self, route: str, outcome: str) -> None:
        """One issuance attempt: ``route`` enroll|renew|acme|service, ``outcome``
        issued|refused|failed, or repeated (an enrollment answered again)."""
        with self._lock:
            self._issuances[(route, outcome)] += 1

    def count_acme(self, kind: str, outcome: str) -> None:
        """One ACME request: ``kind`` new-account|new-order|finalize|…, ``outcome`` ok or
        the problem type's short name (badNonce, unauthorized …)."""
        with self._lock:
            self._acme[(kind, outcome)] += 1

    def observe_validation(self, seconds: float) -> None:
        with self._lock:
            self._validation_count += 1
            self._validation_sum += seconds
            for i, bound in enumerate(VALIDATION_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

    def count_db_error(self) -> None:
        with self._lock:
            self._db_errors += 1

    def issuances(self, route: str, outcome: str) -> int:
        with self._lock:
            return self._issuances[(route, outcome)]

    def render(self) -> str:
        with self._lock:
            issuances = sorted(self._issuances.items())
            acme = sorted(self._acme.items())
            buckets = list(self._buckets)
            count, total, db_errors = (
                self._validation_count,
                self._validation_sum,
                self._db_errors,
            )
        lines: list[str] = []

        def metric(
            name: str, kind: str, text: str, samples: list[tuple[dict[str, str], float]]
        ) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{_labels(labels)} {_num(v)}" for labels, v in samples)

        metric(
            "mtlskit_ca_issuances_total",
            "counter",
            "Certificate requests by route (enroll, renew, acme) and outcome.",
            [({"route": r, "outcome": o}, n) for (r, o), n in issuances],
        )
        metric(
            "mtlskit_acme_requests_total",
            "counter",
            "ACME requests by type and outcome.",
            [({"type": t, "outcome": o}, n) for (t, o), n in acme],
        )
        name = "mtlskit_acme_validation_seconds"
        lines.append(f"# HELP {name} Time to validate one ACME challenge.")
        lines.append(f"# TYPE {name} histogram")
        for bound, n in zip(VALIDATION_BUCKETS, buckets, strict=True):
            lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {n}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {count}')
        lines.append(f"{name}_sum {_num(total)}")
        lines.append(f"{name}_count {count}")
        metric(
            "mtlskit_ca_db_errors_total",
            "counter",
            "Requests that failed because the database failed or was unreachable.",
            [({}, db_errors)],
        )
        if self.ca_not_after is not None:
            metric(
                "mtlskit_ca_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the CA certificate expires (UNIX time).",
                [({}, self.ca_not_after)],
            )
        if self.crl_next_update is not None:
            metric(
                "mtlskit_ca_crl_next_update_timestamp_seconds",
                "gauge",
                "nextUpdate of the CRL that GET /crl serves (UNIX time).",
                [({}, self.crl_next_update)],
            )
        return "\n".join(lines) + "\n"
