"""How TLS 1.3 sessions are kept: speed and memory of each choice, same run (issue 10).

    python bench/experiments/session_tickets.py [--rounds 3] [--duration 3]
        [--before /path/to/old/src] [--handshakes 20000]

Variants of ``mtlskit serve`` (pinned to CPU 0, bin/mtls-loadgen on CPU 1) and the Go
seed server: full and resumed handshakes per server CPU-second (rounds interleaved),
then the server's RSS after ``--handshakes`` full handshakes. ``--before`` runs the
server from another source tree (e.g. ``git archive <commit> src``) as a variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402


def variants(before: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stateful (OpenSSL cache)": lambda c: harness.start_mtlskit(c),
        "stateless tickets": lambda c: harness.start_mtlskit(c, args=["--session-cache", "0"]),
        "go": lambda c: harness.start_go(c),
    }
    if before is not None:
        out["before"] = lambda c: harness.start_mtlskit(c, env={"PYTHONPATH": str(before)})
    return out


def full_handshakes_rss(server: harness.Server, certs: Path, count: int) -> dict[str, Any]:
    """RSS before and after about ``count`` full handshakes (in runs of at most 20 s)."""
    harness.loadgen(server.addr, certs, "keepalive", 0.3, 4)
    base = harness.rss_bytes(server.pid)
    done = 0
    while done < count:
        r = harness.loadgen(server.addr, certs, "handshake", 10, 16)
        done += int(r["ok"])
    after = harness.rss_bytes(server.pid)
    return {
        "handshakes": done,
        "rss_base_mib": round(base / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_growth_mib": round((after - base) / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--handshakes", type=int, default=20_000)
    p.add_argument("--before", type=Path)
    p.add_argument("--modes", default="handshake,resume,keepalive")
    args = p.parse_args()
    from mtlskit.pki.seed import init_seed

    harness.raise_fd_limit()
    certs = Path(tempfile.mkdtemp(prefix="tickets-")) / "certs"
    init_seed(certs)
    results: dict[str, Any] = {}
    running = {name: start(certs) for name, start in variants(args.before).items()}
    try:
        for mode in args.modes.split(","):
            rates: dict[str, list[float]] = {name: [] for name in running}
            for _ in range(args.rounds):
                for name, server in running.items():
                    r = harness.measure(server, certs, mode, args.duration, 16)
                    rates[name].append(r["per_cpu_s"] or 0)
                    if mode == "resume":
                        results.setdefault(name, {})["resumed_share"] = round(
                            r["resumed"] / max(r["ok"], 1), 2
                        )
            for name, values in rates.items():
                results.setdefault(name, {})[mode] = round(statistics.median(values))
                print(f"{mode:10} {name:26} {results[name][mode]:8} req/CPU-s {values}", flush=True)
    finally:
        for server in running.values():
            server.stop()
    for name, start in variants(args.before).items():
        server = start(certs)
        try:
            results[name].update(full_handshakes_rss(server, certs, args.handshakes))
        finally:
            server.stop()
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
