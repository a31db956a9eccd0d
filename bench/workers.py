"""Resumption across workers: `mtlskit serve --workers N`, steered by client address or not.

    python3 bench/workers.py                 # about 2 minutes
    python3 bench/workers.py --quick         # seconds: the harness still works

bin/mtls-loadgen in resume mode (a client keeps its TLS session and comes back
with a new connection each request) from 16 loopback addresses, 127.0.0.1-16,
each address a client with its own session cache, one connection each. For
--workers 2 and 4, with the default client affinity (SO_REUSEPORT steered by a
classic BPF program on the client's address, src/mtlskit/server/affinity.py) and
with --no-worker-affinity (the kernel's hash of addresses and ports), in the same
run: the share of connections that resumed, requests per server CPU-second, and
the spread of the load over the workers (each worker's share of the handshakes,
from its metrics port, and of the CPU time, from /proc). Then all 16 clients from
ONE address (a NAT or a proxy in front): with affinity they share one worker.

The workers are pinned with the supervisor to CPU 0, the load generator to CPU 1,
as in bench/README.md: this measures resumption and spread, not scaling.

Writes bench/results/workers.json (or --out FILE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

SIXTEEN = [f"127.0.0.{i}" for i in range(1, 17)]


def consecutive_ports(count: int) -> int:
    """The first of ``count`` free ports in a row (worker i serves metrics on base + i)."""
    for _ in range(100):
        base = harness.free_port()
        try:
            for i in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise harness.BenchError("no free ports in a row for the metrics")


def handshakes(port: int, timeout: float = 20) -> int:
    """A worker's successful handshakes so far, from its metrics port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise harness.BenchError(f"no metrics on port {port}") from None
            time.sleep(0.02)
    m = re.search(r'^mtlskit_handshakes_total\{outcome="ok"[^}]*\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def run_case(
    certs: Path, workers: int, affinity: bool, sources: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    metrics = consecutive_ports(workers)
    extra = ["--workers", str(workers), "--metrics-port", str(metrics)]
    if not affinity:
        extra.append("--no-worker-affinity")
    server = harness.start_mtlskit(certs, args=extra)
    try:
        for i in range(workers):  # every worker is up (and steers) before the load
            handshakes(metrics + i)
        harness.loadgen(server.addr, certs, "resume", min(1.0, args.duration), 16, sources=sources)
        warm = [handshakes(metrics + i) for i in range(workers)]
        m = harness.measure(server, certs, "resume", args.duration, 16, sources=sources)
        after = [handshakes(metrics + i) for i in range(workers)]
    finally:
        server.stop()
    counts = [a - w for a, w in zip(after, warm, strict=True)]
    total = sum(counts) or 1
    worker_cpu = sorted(m["process_cpu_s"][1:], reverse=True)  # [0] is the supervisor
    cpu_total = sum(worker_cpu) or 1.0
    return {
        "workers": workers,
        "affinity": affinity,
        "client_addresses": len(sources),
        "ok": m["ok"],
        "resumed": m["resumed"],
        "resumed_share": round(m["resumed"] / m["ok"], 4) if m["ok"] else None,
        "errors": m["errors"],
        "per_cpu_s": m["per_cpu_s"],
        "handshake_share": sorted((round(c / total, 3) for c in counts), reverse=True),
        "cpu_share": [round(c / cpu_total, 3) for c in worker_cpu],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--quick", action="store_true", help="1 s per measurement")
    p.add_argument("--out", type=Path, default=HERE / "results" / "workers.json")
    args = p.parse_args()
    if args.quick:
        args.duration = 1.0

    from mtlskit.pki.seed import init_seed

    certs = Path(tempfile.mkdtemp(prefix="bench-workers-")) / "certs"
    init_seed(certs)
    cases = [
        (2, True, SIXTEEN),
        (2, False, SIXTEEN),
        (4, True, SIXTEEN),
        (4, False, SIXTEEN),
        (4, True, ["127.0.0.1"]),  # 16 clients behind one address
    ]
    rows = []
    for workers, affinity, sources in cases:
        row = run_case(certs, workers, affinity, sources, args)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    result = {
        "command": " ".join(sys.argv),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "mode": "resume",
            "connections": 16,
            "keys": "P-256",
            "server_cpus": harness.SERVER_CPUS,
            "load_cpus": harness.LOAD_CPUS,
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| workers | affinity | client addresses | resumed | requests / CPU-s "
        "| handshakes per worker | CPU per worker |"
    )
    print("|--:|---|--:|--:|--:|---|---|")
    for r in rows:
        shares = " / ".join(f"{s:.0%}" for s in r["handshake_share"])
        cpu = " / ".join(f"{s:.0%}" for s in r["cpu_share"])
        print(
            f"| {r['workers']} | {'address' if r['affinity'] else 'none'} "
            f"| {r['client_addresses']} | {r['resumed_share']:.1%} | {r['per_cpu_s']:,.0f} "
            f"| {shares} | {cpu} |"
        )


if __name__ == "__main__":
    main()
