"""Complete ACME orders per server CPU-second: `mtlskit ca serve` against pebble.

One order = newOrder → http-01 validated for real (the server connects to our
responder) → finalize → certificate download. The same josepy client
(bench/acme_client.py) drives both servers, in the same run, rounds interleaved.
Hygiene as in bench/README.md: the server on CPU 0, the client on CPU 1, CPU
seconds from /proc. pebble runs with PEBBLE_VA_NOSLEEP=1, no nonce refused on
purpose, no authorization reuse (each order is validated, as on mtlskit); its
DNS helper (pebble-challtestsrv) is reported apart.

    .venv/bin/python bench/acme_orders.py [--seconds 15] [--workers 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from bench.acme_client import AcmeClient, Http01Responder  # noqa: E402
from bench.harness import Server, _spawn, cpu_seconds, free_port, wait_for_port  # noqa: E402

NAME = "app.internal"
CLIENT_CPUS = {1}


def start_mtlskit_ca(
    ca: Path,
    http_port: int,
    *args: str,
    name: str = "mtlskit",
    env: dict[str, str] | None = None,
) -> Server:
    """`mtlskit ca serve` on CPU 0 with ACME for *.internal (``args``: e.g. --db URL;
    ``env``: e.g. PYTHONPATH of another source tree, the bench's baseline)."""
    port = free_port()
    argv = [sys.executable, "-m", "mtlskit", "ca", "serve", "--ca-dir", str(ca)]
    argv += ["--port", str(port), "--url", f"https://127.0.0.1:{port}"]
    argv += ["--acme-allow", "DNS:*.internal", "--acme-http-port", str(http_port)]
    argv += ["--acme-resolve", f"{NAME}:127.0.0.1", "--rate-limit", "100000000", *args]
    workdir = Path(tempfile.mkdtemp(prefix="bench-acme-"))
    server = _spawn(name, argv, port, "0", workdir, env=env)
    server.notes["directory"] = f"https://127.0.0.1:{port}/acme/directory"
    server.notes["url"] = f"https://127.0.0.1:{port}"
    return server


def start_pebble(tls: Path, http_port: int) -> tuple[Server, Server]:
    dns, dns_mgmt, port, mgmt = free_port(), free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-pebble-"))
    chall = _spawn(
        "challtestsrv",
        [
            "pebble-challtestsrv",
            *("-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{dns_mgmt}"),
            *("-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""),
        ],
        dns_mgmt,
        "0",
        work,
    )
    config = work / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{mgmt}",
                    "certificate": str(tls / "server.crt"),
                    "privateKey": str(tls / "server.key"),
                    "httpPort": http_port,
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    pebble = _spawn(
        "pebble",
        ["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
        port,
        "0",
        Path(tempfile.mkdtemp(prefix="bench-pebble-")),
        env=env,
    )
    wait_for_port(mgmt, pebble.proc)
    pebble.notes["directory"] = f"https://127.0.0.1:{port}/dir"
    return pebble, chall


def run_orders(
    directory: str, tls_root: Path, responder: Http01Responder, workers: int, seconds: float
) -> tuple[int, list[str]]:
    """Orders completed by ``workers`` accounts in ``seconds``; errors seen."""
    ctx = ssl.create_default_context(cafile=str(tls_root))
    done = [0] * workers
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def worker(i: int) -> None:
        with httpx.Client(verify=ctx) as http:
            client = AcmeClient(directory, http)
            client.new_account()
            while time.monotonic() < deadline:
                try:
                    client.obtain([NAME], responder=responder)
                except Exception as exc:  # counted, reported, the loop goes on
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), errors


def measure(
    name: str,
    servers: list[Server],
    tls_root: Path,
    responder: Http01Responder,
    workers: int,
    seconds: float,
) -> dict[str, Any]:
    directory = servers[0].notes["directory"]
    run_orders(directory, tls_root, responder, workers, min(3.0, seconds))  # warm up
    cpu0 = [cpu_seconds(s.pid) for s in servers]
    t0 = time.monotonic()
    orders, errors = run_orders(directory, tls_root, responder, workers, seconds)
    wall = time.monotonic() - t0
    cpu = [cpu_seconds(s.pid) - c for s, c in zip(servers, cpu0, strict=True)]
    row = {
        "server": name,
        "orders": orders,
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu[0], 2),
        "orders_per_s": round(orders / wall, 1),
        "orders_per_cpu_s": round(orders / cpu[0], 1) if cpu[0] else None,
        "errors": len(errors),
    }
    if len(cpu) > 1:
        row["helper_cpu_s"] = round(cpu[1], 2)
        row["orders_per_cpu_s_with_helper"] = round(orders / (cpu[0] + cpu[1]), 1)
    if errors:
        row["first_error"] = errors[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")
    from mtlskit.pki.seed import init_seed

    os.sched_setaffinity(0, CLIENT_CPUS)
    work = Path(tempfile.mkdtemp(prefix="bench-acme-orders-"))
    ca = work / "ca"
    init_seed(ca)
    http_mtlskit, http_pebble = Http01Responder(), Http01Responder()
    mtlskit = start_mtlskit_ca(ca, http_mtlskit.port)
    pebble, chall = start_pebble(ca, http_pebble.port)
    rows = []
    try:
        for _ in range(args.rounds):
            rows.append(
                measure(
                    "mtlskit", [mtlskit], ca / "ca.crt", http_mtlskit, args.workers, args.seconds
                )
            )
            rows.append(
                measure(
                    "pebble",
                    [pebble, chall],
                    ca / "ca.crt",
                    http_pebble,
                    args.workers,
                    args.seconds,
                )
            )
    finally:
        for server in (mtlskit, pebble, chall):
            server.stop()
        http_mtlskit.close()
        http_pebble.close()
    for row in rows:
        print(json.dumps(row))
    by: dict[str, list[float]] = {}
    for row in rows:
        if row["orders_per_cpu_s"]:
            by.setdefault(row["server"], []).append(row["orders_per_cpu_s"])
    if "mtlskit" in by and "pebble" in by:
        m = sum(by["mtlskit"]) / len(by["mtlskit"])
        p = sum(by["pebble"]) / len(by["pebble"])
        print(
            json.dumps(
                {
                    "mtlskit_orders_per_cpu_s": round(m, 1),
                    "pebble_orders_per_cpu_s": round(p, 1),
                    "ratio": round(m / p, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
