"""Run the engine floor servers (engines.py) against the Go seed server, same run.

    python bench/experiments/compare_engines.py [--duration 3] [--keys p256]
        [--variants stdlib/uvloop,pyopenssl/uvloop,...] [--modes keepalive,handshake,resume]

Prints requests per server CPU-second for each variant and its ratio to Go.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import harness  # noqa: E402

DEFAULT_VARIANTS = "stdlib/uvloop,stdlib/asyncio,pyopenssl/uvloop,transport/uvloop"


def start_variant(variant: str, certs: Path, extra: list[str]) -> harness.Server:
    port = harness.free_port()
    if variant.startswith("serve"):  # the real server: serve/stdlib or serve/openssl4
        argv = [sys.executable, str(HERE / "serve_variant.py"), "--engine", variant[6:]]
        argv += ["serve", "--certs", str(certs), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--quiet", *extra]
        workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        return harness._spawn(variant, argv, port, harness.SERVER_CPUS, workdir)
    engine, loop = variant.split("/")
    argv = [sys.executable, str(HERE / "engines.py"), "--engine", engine, "--loop", loop]
    argv += ["--certs", str(certs), "--port", str(port), *extra]
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    return harness._spawn(variant, argv, port, harness.SERVER_CPUS, workdir)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--keys", default="p256")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--modes", default="keepalive,handshake,resume")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--extra", default="", help="extra engines.py flags, e.g. '--tickets 1'")
    args = p.parse_args()
    from mtlskit.pki.seed import init_seed

    tmp = Path(tempfile.mkdtemp(prefix="engines-"))
    certs = tmp / "certs"
    init_seed(certs, key_type=args.keys)
    servers = {"go": harness.start_go(certs)}
    for v in args.variants.split(","):
        servers[v] = start_variant(v, certs, args.extra.split())
    try:
        for s in servers.values():
            harness.loadgen(s.addr, certs, "keepalive", 0.5, 4)
            harness.loadgen(s.addr, certs, "handshake", 0.5, 4)
        for mode in args.modes.split(","):
            results = {}
            for name, s in servers.items():
                results[name] = harness.measure(s, certs, mode, args.duration, args.connections)
            go = results["go"]["per_cpu_s"] or 1
            for name, r in results.items():
                print(
                    f"{args.keys:8} {mode:10} {name:18} {r['rate']:9.0f} req/s "
                    f"{r['per_cpu_s'] or 0:9.0f} req/CPU-s  {(r['per_cpu_s'] or 0) / go:5.2f}x Go"
                    f"  cpu {r['server_cpu_util']:.2f} resumed {r['resumed']} err {r['errors']}",
                    flush=True,
                )
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
