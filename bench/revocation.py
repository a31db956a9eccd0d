"""Revocation cost: full mTLS handshakes with a 100,000-entry CRL against none, same run.

    python3 bench/revocation.py                  # about 3 minutes
    python3 bench/revocation.py --quick          # seconds: the harness still works
    python3 bench/revocation.py --entries 3000 --engines openssl

Two measurements, same certificates (P-256), same run, for the default engine and
(--engines) the stdlib one, which keeps OpenSSL's CRL check:

1. In process, pinned to CPU 0: the server side of full handshakes over memory
   buffers, through the server's own TLS state (tlsstate.build_state, as `serve`
   builds it), without a CRL and with a CRL of N entries made by the CA
   (mtlskit.pki.crl.build_crl, signed by ca.key), alternating handshake by
   handshake; the server's CPU time per handshake (trimmed mean: the slowest 10 %
   are other processes' doing on a shared machine). The precise figure.
2. End to end: `mtlskit serve` without and with the CRL, pinned to CPU 0, measured in
   interleaved rounds by bin/mtls-loadgen (handshake mode: a new connection and a
   full handshake per request) on CPU 1; full handshakes per server CPU-second
   (median of the rounds, and the median of each round's ratio), the server's
   memory, and how long a reload (SIGHUP) of the CRL takes.

Writes bench/results/revocation.json (or --out FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402


@dataclass(frozen=True)
class Revoked:
    """A revocation as the inventory lists it (mtlskit.pki.crl.RevokedRecord)."""

    serial_int: int
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    status: str = "revoked"
    reason: str | None = None


def make_crl(certs: Path, entries: int) -> tuple[Path, float]:
    """The CA's CRL of ``entries`` revoked serials (none of them the client's); seconds."""
    from cryptography import x509

    from mtlskit.pki.ca import CA
    from mtlskit.pki.crl import build_crl, write_crl

    ca = CA.load(certs)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    t0 = time.perf_counter()
    records = [Revoked(x509.random_serial_number(), later) for _ in range(entries)]
    crl = build_crl(ca, records, number=1)
    path = write_crl(crl, certs / f"ca-{entries}.crl")
    return path, time.perf_counter() - t0


def in_process(certs: Path, crl: Path, engine: str, handshakes: int) -> dict[str, Any]:
    """Server CPU per full handshake without and with ``crl`` (µs), alternating."""
    import os
    import ssl

    from mtlskit.server.tlsstate import build_state
    from mtlskit.tls import client_context

    os.environ["MTLSKIT_TLS_ENGINE"] = engine
    files = (certs / "server.crt", certs / "server.key", certs / "ca.crt")
    states = {"none": build_state(*files), "crl": build_state(*files, crl=crl)}
    client = client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")

    def one(state: Any) -> int:
        server = state.new_session()
        into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client.wrap_bio(into, out, server_hostname="localhost")
        spent = 0
        while True:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            data = out.read()
            t0 = time.thread_time_ns()
            server.feed(data)
            done = server.do_handshake()
            reply = server.output()
            spent += time.thread_time_ns() - t0
            into.write(reply)
            if done:
                return spent

    times: dict[str, list[int]] = {name: [] for name in states}
    for state in states.values():  # warm-up
        one(state)
    for _ in range(handshakes):
        for name, state in states.items():
            times[name].append(one(state))
    out: dict[str, Any] = {"engine": engine, "handshakes": handshakes}
    for name, values in times.items():
        values.sort()
        kept = values[: max(1, len(values) * 9 // 10)]
        out[f"{name}_us"] = round(sum(kept) / len(kept) / 1000, 1)
    out["ratio"] = round(out["crl_us"] / out["none_us"], 4)
    return out


def reload_seconds(server: harness.Server, timeout: float = 60) -> float | None:
    """SIGHUP, then the time until the log says the reload is done."""
    before = server.log.read_text(errors="replace").count("reloaded certificates")
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGHUP)
    while time.monotonic() - t0 < timeout:
        if server.log.read_text(errors="replace").count("reloaded certificates") > before:
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--engines", default="openssl,stdlib", help="openssl, stdlib or both")
    p.add_argument("--handshakes", type=int, default=3000, help="in process, per variant")
    p.add_argument("--quick", action="store_true", help="1 round of 1 s, 1,000 entries")
    p.add_argument("--out", type=Path, default=HERE / "results" / "revocation.json")
    args = p.parse_args()
    if args.quick:
        args.entries, args.duration, args.rounds, args.handshakes = 1000, 1.0, 1, 50

    from mtlskit.pki.seed import init_seed

    tmp = Path(tempfile.mkdtemp(prefix="bench-revocation-"))
    certs = tmp / "certs"
    init_seed(certs)
    crl, crl_seconds = make_crl(certs, args.entries)
    print(f"CRL of {args.entries:,} entries made in {crl_seconds:.1f} s", file=sys.stderr)

    import os

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(harness.SERVER_CPUS)})
    precise = []
    for engine in args.engines.split(","):
        # OpenSSL's own check costs ~8 ms a handshake with 100,000 entries: fewer of them.
        n = args.handshakes if engine == "openssl" else max(10, args.handshakes // 10)
        precise.append(in_process(certs, crl, engine, n))
        print(json.dumps(precise[-1]), file=sys.stderr)
    os.sched_setaffinity(0, affinity)

    servers: dict[str, harness.Server] = {}
    try:
        for engine in args.engines.split(","):
            env = {"MTLSKIT_TLS_ENGINE": engine}
            servers[engine] = harness.start_mtlskit(certs, env=env)
            servers[f"{engine}+crl"] = harness.start_mtlskit(
                certs, env=env, args=["--crl", str(crl), "--watch-interval", "0"]
            )
        for s in servers.values():  # warm-up
            harness.loadgen(s.addr, certs, "handshake", min(1.0, args.duration), 4)
        rates: dict[str, list[float]] = {name: [] for name in servers}
        errors: dict[str, int] = {name: 0 for name in servers}
        for r in range(args.rounds):
            for name, s in servers.items():  # interleaved: a noisy moment hits every server
                m = harness.measure(s, certs, "handshake", args.duration, args.connections)
                rates[name].append(m["per_cpu_s"] or 0.0)
                errors[name] += int(m["errors"])
                print(f"round {r + 1} {name}: {m['per_cpu_s']}/CPU-s", file=sys.stderr)
        rows: list[dict[str, Any]] = []
        for name, s in servers.items():
            engine = name.split("+")[0]
            median = statistics.median(rates[name])
            base = statistics.median(rates[engine])
            paired = [a / b for a, b in zip(rates[name], rates[engine], strict=True) if b]
            rows.append(
                {
                    "server": name,
                    "crl_entries": args.entries if name.endswith("+crl") else 0,
                    "handshakes_per_cpu_s": round(median, 1),
                    "rounds": rates[name],
                    "ratio_to_no_crl": round(median / base, 3) if base else None,
                    "ratio_paired_median": round(statistics.median(paired), 3) if paired else None,
                    "errors": errors[name],
                    "rss_mib": round(harness.rss_bytes(s.pid) / 2**20, 1),
                    "reload_s": reload_seconds(s),
                }
            )
    finally:
        for s in servers.values():
            s.stop()

    result = {
        "command": " ".join(sys.argv),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "entries": args.entries,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "keys": "P-256",
            "server_cpus": harness.SERVER_CPUS,
            "load_cpus": harness.LOAD_CPUS,
        },
        "crl_build_s": round(crl_seconds, 2),
        "in_process": precise,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"In process, server CPU per full handshake, CRL of {args.entries:,} entries:\n")
    print("| engine | no CRL µs | with CRL µs | ratio | handshakes each |")
    print("|---|--:|--:|--:|--:|")
    for r in precise:
        print(
            f"| {r['engine']} | {r['none_us']:,.1f} | {r['crl_us']:,.1f} | {r['ratio']:.3f}× "
            f"| {r['handshakes']:,} |"
        )
    print("\nEnd to end (mtls-loadgen, handshake mode):\n")
    print(
        "| server | CRL entries | full handshakes / CPU-s | vs no CRL (median, paired) "
        "| RSS MiB | reload s |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for row in rows:
        print(
            f"| {row['server']} | {row['crl_entries']:,} | {row['handshakes_per_cpu_s']:,.0f} "
            f"| {row['ratio_to_no_crl']:.2f}× / {row['ratio_paired_median']:.2f}× "
            f"| {row['rss_mib']} | {row['reload_s'] or 0:.2f} |"
        )


if __name__ == "__main__":
    main()
