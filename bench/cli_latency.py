"""Wall time of one request from the command line: `mtlskit get` vs curl vs a bare Python client.

All call the same server on 127.0.0.1 in the same run (the Go seed server,
bin/seed-server, or with ``--server mtlskit`` `mtlskit serve`),
with the same certificates (`mtlskit init`, P-256 by default), round-robin so that
noise from other processes spreads evenly: curl, the Go seed client, `mtlskit get`
(with and without cached byte code), `mtlskit.client.get()` without the CLI,
`mtlskit --help` (the CLI's start-up), a bare Python ssl client (the floor for any
Python client that imports ssl) and `python -c pass`.

    .venv/bin/python bench/cli_latency.py [-n 40] [--key-type rsa4096] [--server mtlskit]
                                          [--before SRC]

``--before SRC`` adds a row for `mtlskit get` run from an earlier source tree (e.g.
``git archive main src | tar -x -C DIR``, then ``--before DIR/src``): a before/after
in the same run.

Prints a table (median, min, p90 and the ratio to curl) and writes
bench/results/cli_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # bench/harness.py: this script's folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"


# The least any Python client can do: import ssl, handshake, one raw HTTP/1.1
# exchange (no click, no http.client). What no Python CLI can go below. Without
# TCP_NODELAY (which curl and mtlskit set) a server that sends nothing after the
# handshake would delay its ACK, and Nagle the request, by ~40 ms.
_FLOOR = """
import socket, ssl, sys
url, certs = sys.argv[1], sys.argv[2]
host, port = url.split("//")[1].split(":")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(certs + "/ca.crt")
ctx.load_cert_chain(certs + "/client.crt", certs + "/client.key")
raw = socket.create_connection((host.encode(), int(port)))
raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
with ctx.wrap_socket(raw, server_hostname=host.encode()) as s:
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
sys.stdout.buffer.write(data.split(b"\\r\\n\\r\\n", 1)[1] + b"\\n")
"""

# mtlskit.client.get() alone: what `mtlskit get` costs without the click CLI around it.
_API = """
import sys
from mtlskit.client import get
sys.stdout.buffer.write(get(sys.argv[1], certs=sys.argv[2]).body + b"\\n")
"""


def _mtlskit() -> list[str]:
    script = Path(sys.executable).with_name("mtlskit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtlskit"]


def _time(cmd: list[str], expect: bytes | None, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or (expect is not None and expect not in proc.stdout):
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="runs per command")
    parser.add_argument("--key-type", default="p256", help="mtlskit init --key-type")
    parser.add_argument(
        "--server",
        choices=["go", "mtlskit"],
        default="go",
        help="the server called: the Go seed server, or mtlskit serve (from this tree)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="also time `mtlskit get` from this source folder (the src/ of an earlier commit)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_latency.json")
    args = parser.parse_args()

    seed_server = BIN / "seed-server"
    seed_client = BIN / "seed-client"
    for path in (seed_server, seed_client):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run scripts/setup.sh --test")
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("curl is not installed: run scripts/setup.sh --test")

    tmp = Path(tempfile.mkdtemp(prefix="mtlskit-cli-bench-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        certs = tmp / "certs"
        subprocess.run(
            [*_mtlskit(), "init", "--dir", str(certs), "--key-type", args.key_type],
            check=True,
            capture_output=True,
        )
        port = harness.free_port()
        if args.server == "go":
            argv = [str(seed_server), "-addr", f"127.0.0.1:{port}", "-certs", str(certs)]
            argv.append("-quiet")
        else:
            argv = [*_mtlskit(), "serve", "--certs", str(certs), "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--quiet"]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            harness.wait_for_port(port, server)
        except harness.BenchError as exc:
            raise SystemExit(f"{args.server} server: {exc}") from exc
        url = f"https://localhost:{port}"
        hello = b"hello world"
        # As installed, modules run from .pyc; this environment may set
        # PYTHONDONTWRITEBYTECODE, so byte code is cached in the temp folder instead
        # (one row keeps the no-cache case, to show what it costs).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        no_pyc = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        commands: dict[str, tuple[list[str], bytes | None]] = {
            "curl": (
                [
                    curl,
                    "-sS",
                    "--cacert",
                    str(certs / "ca.crt"),
                    "--cert",
                    str(certs / "client.crt"),
                    "--key",
                    str(certs / "client.key"),
                    url,
                ],
                hello,
            ),
            "go seed client": ([str(seed_client), "-url", url, "-certs", str(certs)], hello),
            "mtlskit get": ([*_mtlskit(), "get", url, "--certs", str(certs)], hello),
            **(
                {"mtlskit get, before": ([*_mtlskit(), "get", url, "--certs", str(certs)], hello)}
                if args.before is not None
                else {}
            ),
            "mtlskit get, no pyc": ([*_mtlskit(), "get", url, "--certs", str(certs)], hello),
            "mtlskit --help": ([*_mtlskit(), "--help"], b"Usage"),
            "get() without click": ([sys.executable, "-c", _API, url, str(certs)], hello),
            "python ssl floor": ([sys.executable, "-c", _FLOOR, url, str(certs)], hello),
            "python -c pass": ([sys.executable, "-c", "pass"], None),
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        envs = {name: no_pyc if "no pyc" in name else env for name in commands}
        if args.before is not None:  # found before the installed (editable) mtlskit
            envs["mtlskit get, before"] = {**env, "PYTHONPATH": str(args.before.resolve())}
        for name, (cmd, expect) in commands.items():  # warm caches (page cache, .pyc)
            for _ in range(3):
                _time(cmd, expect, envs[name])
        for _ in range(args.n):
            for name, (cmd, expect) in commands.items():
                samples[name].append(_time(cmd, expect, envs[name]))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = {
        name: {
            "median_ms": statistics.median(ts) * 1000,
            "min_ms": min(ts) * 1000,
            "p90_ms": statistics.quantiles(ts, n=10)[-1] * 1000,
        }
        for name, ts in samples.items()
    }
    curl_median = rows["curl"]["median_ms"]
    ratio = rows["mtlskit get"]["median_ms"] / curl_median
    print(f"{'command':20s} {'median':>8s} {'min':>8s} {'p90':>8s} {'x curl':>7s}")
    for name, row in rows.items():
        print(
            f"{name:20s} {row['median_ms']:7.1f}ms {row['min_ms']:7.1f}ms {row['p90_ms']:7.1f}ms"
            f" {row['median_ms'] / curl_median:6.1f}x"
        )
    floor = rows["mtlskit get"]["median_ms"] / rows["python ssl floor"]["median_ms"]
    print(f"mtlskit get = {ratio:.2f}x curl (median)")
    print(f"mtlskit get = {floor:.2f}x the bare Python ssl client (median)")
    if args.before is not None:
        before = rows["mtlskit get, before"]["median_ms"] / rows["mtlskit get"]["median_ms"]
        print(f"mtlskit get before = {before:.2f}x mtlskit get now (median)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "runs": args.n,
        "key_type": args.key_type,
        "server": args.server,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rows": rows,
        "mtlskit_get_vs_curl": ratio,
        "mtlskit_get_vs_python_floor": floor,
        "before": str(args.before) if args.before is not None else None,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
