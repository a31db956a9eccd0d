"""The ASGI row: one tiny ASGI app behind mtlskit serve, uvicorn and granian, same run.

    python bench/asgi.py             # 5 interleaved rounds of 3 s per workload
    python bench/asgi.py --quick     # seconds: keeps the script working (smoke test)

All three require client certificates (uvicorn ``--ssl-cert-reqs 2 --ssl-ca-certs``,
granian ``--ssl-ca --ssl-client-verify``; granian's key must be PKCS#8, so the bench
hands it a PKCS#8 copy of the same key). P-256 certificates from ``mtlskit init``,
keep-alive GETs and full handshakes (a new connection per request) from
bin/mtls-loadgen on CPU 1, each server on CPU 0 with one worker and uvloop, figures in
requests per CPU-second of the server's whole process tree (granian runs its worker
in a child process). uvicorn and granian come from the ``bench`` extras.

Writes bench/results/asgi.json and asgi.md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from harness import BenchError, Server  # noqa: E402

APP = """
BODY = b"hello world \\n"
START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                     (b"content-length", b"%d" % len(BODY))]}
RESPONSE = {"type": "http.response.body", "body": BODY}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(START)
    await send(RESPONSE)
"""

SERVERS = ("mtlskit", "uvicorn", "granian")
MODES = ("keepalive", "handshake")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pkcs8_copy(certs: Path, dest: Path) -> Path:
    """The same certificates, with the server key as PKCS#8 (what granian reads)."""
    from cryptography.hazmat.primitives import serialization

    shutil.copytree(certs, dest)
    key = serialization.load_pem_private_key((certs / "server.key").read_bytes(), None)
    (dest / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return dest


def start_uvicorn(certs: Path, app_dir: Path) -> Server:
    port = harness.free_port()
    argv = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--app-dir", str(app_dir), "--loop", "uvloop", "--http", "httptools"]
    argv += ["--ws", "none", "--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    argv += [
        "--ssl-certfile",
        str(certs / "server.crt"),
        "--ssl-keyfile",
        str(certs / "server.key"),
    ]
    argv += ["--ssl-ca-certs", str(certs / "ca.crt"), "--ssl-cert-reqs", "2"]
    return harness._spawn("uvicorn", argv, port, harness.SERVER_CPUS, Path(tempfile.mkdtemp()))


def start_granian(certs: Path, app_dir: Path) -> Server:
    port = harness.free_port()
    exe = str(Path(sys.executable).parent / "granian")
    argv = [exe, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", "1", "--runtime-mode", "st", "--loop", "uvloop", "--no-ws"]
    argv += ["--no-access-log", "--log-level", "warning", "--working-dir", str(app_dir)]
    argv += ["--ssl-certificate", str(certs / "server.crt"), "--ssl-keyfile"]
    argv += [str(certs / "server.key"), "--ssl-ca", str(certs / "ca.crt"), "--ssl-client-verify"]
    argv += ["app:app"]
    return harness._spawn("granian", argv, port, harness.SERVER_CPUS, Path(tempfile.mkdtemp()))


def start_mtlskit(certs: Path, app_dir: Path, src: Path | None = None) -> Server:
    """``mtlskit serve app:app``; from the source folder ``src`` when given (--before)."""
    path = f"{app_dir}:{src}" if src else str(app_dir)
    return harness.start_mtlskit(certs, env={"PYTHONPATH": path}, args=["app:app"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mtlskit.pki.seed import init_seed

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tmp = Path(tempfile.mkdtemp(prefix="bench-asgi-"))
    certs = tmp / "certs"
    init_seed(certs)
    granian_certs = pkcs8_copy(certs, tmp / "certs-pkcs8")
    app_dir = tmp / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(APP)
    starters: dict[str, Callable[[], Server]] = {
        "mtlskit": lambda: start_mtlskit(certs, app_dir),
        "uvicorn": lambda: start_uvicorn(certs, app_dir),
        "granian": lambda: start_granian(granian_certs, app_dir),
    }
    if args.before is not None:
        starters["mtlskit-before"] = lambda: start_mtlskit(certs, app_dir, args.before)
    rows: list[dict[str, Any]] = []
    running: dict[str, Server] = {}
    try:
        for name, start in starters.items():
            try:
                running[name] = start()
                harness.loadgen(running[name].addr, certs, "keepalive", args.warmup, 4)
                harness.loadgen(running[name].addr, certs, "handshake", args.warmup, 4)
            except BenchError as exc:
                log(f"skip {name}: {exc}")
                rows.append({"server": name, "error": str(exc)})
        for mode in MODES:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in running}
            for rnd in range(args.rounds):
                for name, server in running.items():
                    r = harness.measure(server, certs, mode, args.duration, args.connections)
                    r["processes"] = len(harness.process_tree(server.pid))
                    runs[name].append(r)
                    log(
                        f"{mode:10} {name:8} round {rnd + 1}: {r['rate']:8.0f} req/s "
                        f"{r['per_cpu_s'] or 0:8.0f} req/CPU-s  cpu {r['server_cpu_util']:.2f} "
                        f"err {r['errors']}"
                    )
            for name, values in runs.items():
                per = [v["per_cpu_s"] for v in values if v["per_cpu_s"]]
                rows.append(
                    {
                        "server": name,
                        "mode": mode,
                        "rate": round(statistics.median(v["rate"] for v in values), 1),
                        "per_cpu_s": round(statistics.median(per), 1) if per else None,
                        "rounds_per_cpu_s": per,
                        "errors": sum(v["errors"] for v in values),
                        "first_error": next((v["first_error"] for v in values if v["errors"]), ""),
                        "processes": values[-1]["processes"],
                        "tls_version": values[-1]["tls_version"],
                    }
                )
    finally:
        for server in running.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "command": " ".join(["python3", "bench/asgi.py", *sys.argv[1:]]),
        "started": started,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "connections": args.connections,
            "server_cpus": harness.SERVER_CPUS,
            "load_cpus": harness.LOAD_CPUS,
        },
        "versions": versions(),
        "rows": rows,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("mtlskit", "uvicorn", "granian", "uvloop", "httptools", "cryptography"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = {(r["server"], r.get("mode")): r for r in data["rows"]}
    s = data["settings"]
    lines = [
        f"`{data['command']}` — {data['started']}, median of {s['rounds']} interleaved rounds "
        f"of {s['duration_s']:g} s, {s['connections']} connections; server on CPU "
        f"{s['server_cpus']}, mtls-loadgen on CPU {s['load_cpus']}; requests per CPU-second of "
        "the server's process tree. Versions: "
        + ", ".join(f"{k} {v}" for k, v in data["versions"].items())
        + ".",
        "",
        "| workload | mtlskit req/CPU-s | uvicorn req/CPU-s | granian req/CPU-s "
        "| mtlskit/uvicorn | mtlskit/granian |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for mode in MODES:
        m, u, g = (rows.get((n, mode), {}).get("per_cpu_s") for n in SERVERS)
        lines.append(
            f"| {mode} | {m or '–'} | {u or '–'} | {g or '–'} | "
            f"{round(m / u, 2) if m and u else '–'}× | {round(m / g, 2) if m and g else '–'}× |"
        )
    if any(server == "mtlskit-before" for server, _ in rows):
        lines += [
            "",
            "| workload | mtlskit before | mtlskit after | after/before |",
            "|---|--:|--:|--:|",
        ]
        for mode in MODES:
            b = rows.get(("mtlskit-before", mode), {}).get("per_cpu_s")
            a = rows.get(("mtlskit", mode), {}).get("per_cpu_s")
            lines.append(
                f"| {mode} | {b or '–'} | {a or '–'} | {round(a / b, 2) if a and b else '–'}× |"
            )
    errors = [r for r in data["rows"] if r.get("error") or r.get("errors")]
    for r in errors:
        lines.append(f"\n{r['server']} {r.get('mode', '')}: {r.get('error') or r['first_error']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description="mtlskit serve vs uvicorn vs granian, one ASGI app.")
    p.add_argument("--quick", action="store_true", help="seconds in total: a smoke run")
    p.add_argument("--duration", type=float, help="seconds per load run (default 3; quick 0.3)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 1)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument(
        "--before",
        type=Path,
        help="also run mtlskit from this source folder (the src/ of an earlier commit)",
    )
    args = p.parse_args()
    args.duration = args.duration or (0.3 if args.quick else 3.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.warmup = 0.1 if args.quick else 1.0
    harness.raise_fd_limit()
    data = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "asgi.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "asgi.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
