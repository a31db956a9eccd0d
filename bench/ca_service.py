"""The CA service's speed, in one run: enrollments per server CPU-second (P-256) on
SQLite and on PostgreSQL, and complete ACME orders per server CPU-second against
pebble (bench/acme_orders.py's comparison).

One enrollment = one `POST /enroll` (a one-time token made beforehand and a CSR for a
new P-256 key) on a new TLS connection, as `mtlskit enroll` sends it; answered 201 with
the certificate, recorded in the inventory. One ACME order = newOrder → http-01
validated for real → finalize → download. Hygiene as in bench/README.md: the server
(`mtlskit ca serve`, and PostgreSQL) on CPU 0, the clients on CPU 1, CPU seconds from
/proc/PID/stat of the server's process tree; PostgreSQL's own CPU is shown apart.

``--baseline SRC`` also runs the servers from another source tree (e.g. a worktree of
main: ``git worktree add /tmp/base main``, then ``--baseline /tmp/base/src``), rounds
interleaved, so a change is measured before/after in the same run.

    .venv/bin/python bench/ca_service.py [--quick] [--rounds 2] [--baseline SRC]

Writes bench/results/ca_service.json and prints a table (Markdown) and the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.acme_client import Http01Responder  # noqa: E402
from bench.acme_orders import measure as measure_acme  # noqa: E402
from bench.acme_orders import start_mtlskit_ca, start_pebble  # noqa: E402
from bench.harness import Server, cpu_seconds, process_tree  # noqa: E402

POSTGRES_SH = ROOT / "scripts" / "postgres.sh"
RESULTS = ROOT / "bench" / "results"
CLIENT_CPUS = {1}
SERVER_CPUS = "0"
TARGET_ENROLL_PER_CPU_S = 300.0
TARGET_ACME_VS_PEBBLE = 1.0


# -- PostgreSQL ----------------------------------------------------------------------------


class Postgres:
    """scripts/postgres.sh's throwaway cluster, pinned to the server's CPU."""

    def __init__(self) -> None:
        # Under /tmp: run by root, the cluster belongs to the postgres user.
        self.dir = Path(tempfile.mkdtemp(prefix="mtlskit-bench-pg-"))
        r = subprocess.run(
            ["bash", str(POSTGRES_SH), "start", str(self.dir)], capture_output=True, text=True
        )
        if r.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr.strip()}")
        self.url = r.stdout.strip()
        self.pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        # Backends forked later inherit the postmaster's affinity.
        for pid in process_tree(self.pid):
            subprocess.run(
                ["taskset", "-a", "-p", "-c", SERVER_CPUS, str(pid)], capture_output=True
            )

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(self.dir)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- enrollment ----------------------------------------------------------------------------


def make_tokens(location: str, count: int) -> list[str]:
    """``count`` one-time client tokens, through the database (no migration: a baseline
    server's database keeps its schema)."""
    from mtlskit.database import open_database
    from mtlskit.service.tokens import create_token

    db = open_database(location)
    try:
        return [create_token(db, f"n{i}", ttl=dt.timedelta(hours=1))[0] for i in range(count)]
    finally:
        db.close()


def make_csrs(count: int) -> list[bytes]:
    from cryptography import x509

    from mtlskit.pki.ca import create_csr, csr_pem
    from mtlskit.pki.keys import generate_key

    return [csr_pem(create_csr(generate_key("p256"), x509.Name([]), [])) for _ in range(count)]


def enroll_all(url: str, ca_cert: Path, tokens: list[str], csrs: list[bytes], workers: int) -> int:
    """Enroll every token with mtlskit's own client (a new connection each); the number
    answered with a certificate. The warm-up, and proof that the real client works."""
    from mtlskit.caclient import enroll_csr
    from mtlskit.tls import client_context

    context = client_context(ca_cert)
    work = list(zip(tokens, csrs, strict=True))
    lock = threading.Lock()
    done = [0]
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                token, csr = work.pop()
            try:
                enroll_csr(url, token, csr, context)
            except Exception as exc:  # counted, reported; the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(f"  {len(errors)} enrollment errors, first: {errors[0]}", file=sys.stderr)
    return done[0]


def _post_all(
    addr: tuple[str, int], ca_cert: Path, requests: list[bytes], threads: int, out: Any, go: Any
) -> None:
    """In a child process: once ``go`` is set, send each request on a new TLS connection;
    put ("ready",) first, then (201s, failures)."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    lock = threading.Lock()
    counts = [0, 0]

    def worker(share: list[bytes]) -> None:
        for request in share:
            try:
                with socket.create_connection(addr) as raw:
                    # As curl and Go do: else the request waits for the ACK of the
                    # client's Finished (Nagle), up to 40 ms of delayed ACK.
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    with context.wrap_socket(raw, server_hostname=addr[0]) as conn:
                        conn.sendall(request)
                        head = conn.recv(12)
                        while conn.recv(65536):  # the answer, to the end (Connection: close)
                            pass
                ok = head.startswith(b"HTTP/1.1 201")
            except OSError:
                ok = False
            with lock:
                counts[0 if ok else 1] += 1

    pool = [threading.Thread(target=worker, args=(requests[i::threads],)) for i in range(threads)]
    out.put(("ready",))
    go.wait()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(tuple(counts))


def enroll_load(
    url: str,
    ca_cert: Path,
    tokens: list[str],
    csrs: list[bytes],
    on_start: Any,
    processes: int = 4,
) -> int:
    """Enroll every token as fast as CPU 1 allows: one `POST /enroll` per new TLS
    connection, made in advance as bytes and sent from ``processes`` processes (4 threads
    each, no GIL between them), so the client is not what limits the server.
    ``on_start()`` runs once they are ready, just before they start. The number of 201s.
    """
    parts = urlsplit(url)
    addr = (parts.hostname or "127.0.0.1", parts.port or 443)
    requests = []
    for token, csr in zip(tokens, csrs, strict=True):
        body = json.dumps({"token": token, "csr": csr.decode("ascii")}).encode()
        head = (
            f"POST /enroll HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        requests.append(head.encode() + body)
    spawn = multiprocessing.get_context("spawn")  # this process has threads: no fork
    out, go = spawn.Queue(), spawn.Event()
    children = [
        spawn.Process(target=_post_all, args=(addr, ca_cert, requests[i::processes], 4, out, go))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    for _ in children:
        out.get()  # ready
    on_start()
    go.set()
    results = [out.get() for _ in children]
    for child in children:
        child.join()
    failed = sum(r[1] for r in results)
    if failed:
        print(f"  {failed} enrollments failed", file=sys.stderr)
    return int(sum(r[0] for r in results))


@dataclass
class Target:
    """One `ca serve` under measurement: which code, which database."""

    code: str  # "current" or "baseline"
    db: str  # "sqlite" or "postgresql"
    server: Server
    location: str  # the database: a SQLite path or a postgresql:// URL
    ca: Path
    responder: Http01Responder  # its http-01 responder (ACME)


def measure_enroll(
    target: Target, count: int, workers: int, postgres: Postgres | None
) -> dict[str, Any]:
    server, location, ca_dir = target.server, target.location, target.ca
    url = server.notes["url"]
    enroll_all(url, ca_dir / "ca.crt", make_tokens(location, 20), make_csrs(20), workers)  # warm
    tokens, csrs = make_tokens(location, count), make_csrs(count)
    start: dict[str, float] = {}

    def on_start() -> None:
        start["pg"] = cpu_seconds(postgres.pid) if postgres else 0.0
        start["cpu"] = cpu_seconds(server.pid)
        start["t"] = time.monotonic()

    done = enroll_load(url, ca_dir / "ca.crt", tokens, csrs, on_start)
    wall = time.monotonic() - start["t"]
    cpu = cpu_seconds(server.pid) - start["cpu"]
    pg0 = start["pg"]
    row: dict[str, Any] = {
        "bench": "enroll",
        "code": target.code,
        "db": target.db,
        "enrollments": done,
        "errors": count - done,
        "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "per_s": round(done / wall, 1),
        "per_cpu_s": round(done / cpu, 1) if cpu else None,
    }
    if postgres is not None:
        pg = cpu_seconds(postgres.pid) - pg0
        row["db_cpu_s"] = round(pg, 2)
        row["per_cpu_s_with_db"] = round(done / (cpu + pg), 1) if cpu + pg else None
    return row


def init_ca(folder: Path, env: dict[str, str] | None) -> None:
    subprocess.run(
        [sys.executable, "-m", "mtlskit", "init", "--dir", str(folder)],
        check=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )


# -- the run -------------------------------------------------------------------------------


def median(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field)]
    return round(statistics.median(values), 1) if values else None


def summarize(rows: list[dict[str, Any]], codes: list[str]) -> list[dict[str, Any]]:
    summary = []
    for code in codes:
        for db in ("sqlite", "postgresql"):
            mine = [
                r for r in rows if r["bench"] == "enroll" and r["code"] == code and r["db"] == db
            ]
            if mine:
                summary.append(
                    {
                        "what": f"enrollments per server CPU-s ({db})",
                        "code": code,
                        "value": median(mine, "per_cpu_s"),
                        "with_db": median(mine, "per_cpu_s_with_db"),
                        "target": TARGET_ENROLL_PER_CPU_S,
                    }
                )
        orders = [r for r in rows if r["bench"] == "acme" and r["server"] == code]
        pebble = [r for r in rows if r["bench"] == "acme" and r["server"] == "pebble"]
        m, p = median(orders, "orders_per_cpu_s"), median(pebble, "orders_per_cpu_s")
        if m and p:
            summary.append(
                {
                    "what": "ACME orders per server CPU-s vs pebble",
                    "code": code,
                    "value": m,
                    "pebble": p,
                    "ratio": round(m / p, 2),
                    "target": TARGET_ACME_VS_PEBBLE,
                }
            )
    for item in summary:
        value = item.get("ratio", item["value"])
        item["met"] = value is not None and value >= item["target"]
    return summary


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| what | code | value | target | met |", "|---|---|--:|--:|---|"]
    for s in summary:
        if "ratio" in s:
            value = f"{s['value']} vs pebble {s['pebble']} = {s['ratio']}×"
            target = f"{s['target']}×"
        else:
            extra = f" ({s['with_db']} with the DB's CPU)" if s.get("with_db") else ""
            value, target = f"{s['value']}{extra}", f"{s['target']:g}"
        lines.append(
            f"| {s['what']} | {s['code']} | {value} | {target} | {'yes' if s['met'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="[3; --quick 1]")
    parser.add_argument("--enrollments", type=int, default=None, help="per round [1500; quick 60]")
    parser.add_argument("--acme-seconds", type=float, default=None, help="per round [10; quick 2]")
    parser.add_argument("--workers", type=int, default=8, help="client threads (CPU 1)")
    parser.add_argument("--baseline", type=Path, help="also run the servers from this src/")
    parser.add_argument("--no-postgresql", action="store_true")
    parser.add_argument("--no-acme", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "ca_service.json")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.enrollments or (60 if args.quick else 1500)
    seconds = args.acme_seconds or (2.0 if args.quick else 10.0)
    if args.baseline is not None and not (args.baseline / "mtlskit").is_dir():
        parser.error(f"--baseline {args.baseline}: no mtlskit package there (give its src/)")
    if not 0 < seconds <= 60:
        parser.error("--acme-seconds must be in (0, 60]")

    from mtlskit.pki.seed import init_seed

    os.sched_setaffinity(0, CLIENT_CPUS)
    work = Path(tempfile.mkdtemp(prefix="bench-ca-service-"))
    codes: dict[str, dict[str, str] | None] = {"current": None}
    if args.baseline is not None:
        codes["baseline"] = {"PYTHONPATH": str(args.baseline.resolve())}
    postgres = None if args.no_postgresql else Postgres()
    targets: list[Target] = []
    extras: list[Server] = []
    responders: list[Http01Responder] = []
    rows: list[dict[str, Any]] = []
    try:
        for code, env in codes.items():
            for db in ("sqlite", "postgresql"):
                if db == "postgresql" and postgres is None:
                    continue
                ca = work / f"{code}-{db}" / "ca"
                init_ca(ca, env)  # by the code under test: its schema in CA_DIR/ca.db
                if postgres is not None and db == "postgresql":
                    location = postgres.database(f"b_{code}")
                    extra: tuple[str, ...] = ("--db", location)
                else:
                    location, extra = str(ca / "ca.db"), ()
                responder = Http01Responder()
                responders.append(responder)
                server = start_mtlskit_ca(ca, responder.port, *extra, name=code, env=env)
                targets.append(Target(code, db, server, location, ca, responder))
        pebble: tuple[Server, Server, Http01Responder] | None = None
        if not args.no_acme:
            responder = Http01Responder()
            responders.append(responder)
            tls = work / "pebble-tls"
            init_seed(tls)
            server, chall = start_pebble(tls, responder.port)
            extras += [server, chall]
            pebble = (server, chall, responder)
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", file=sys.stderr)
            for t in targets:
                pg = postgres if t.db == "postgresql" else None
                rows.append(measure_enroll(t, count, args.workers, pg))
                print("  " + json.dumps(rows[-1]), file=sys.stderr)
            if pebble is None:
                continue
            # ACME on the SQLite servers (as acme_orders.py), pebble in the same round.
            for t in targets:
                if t.db == "sqlite":
                    row = measure_acme(t.code, [t.server], t.ca / "ca.crt", t.responder, 4, seconds)
                    rows.append({"bench": "acme", **row})
                    print("  " + json.dumps(rows[-1]), file=sys.stderr)
            server, chall, responder = pebble
            tls_root = work / "pebble-tls" / "ca.crt"
            row = measure_acme("pebble", [server, chall], tls_root, responder, 4, seconds)
            rows.append({"bench": "acme", **row})
            print("  " + json.dumps(rows[-1]), file=sys.stderr)
    finally:
        for server in [t.server for t in targets] + extras:
            server.stop()
        for responder in responders:
            responder.close()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(rows, list(codes))
    result = {
        "command": " ".join(sys.argv),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "rounds": rounds,
            "enrollments_per_round": count,
            "acme_seconds": seconds,
            "workers": args.workers,
            "baseline": str(args.baseline) if args.baseline else None,
            "server_cpus": SERVER_CPUS,
            "client_cpus": sorted(CLIENT_CPUS),
        },
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
