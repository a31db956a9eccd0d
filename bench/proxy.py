"""`mtlskit proxy server` against stunnel4 and nginx, same certificates, same backend, same run.

    python3 bench/proxy.py             # about 5 minutes
    python3 bench/proxy.py --quick     # seconds: keeps the harness working

Proxies (each pinned to CPU 0, its CPU time read from /proc):

    mtlskit-l4     mtlskit proxy server (bytes)
    mtlskit-l7     mtlskit proxy server --http (identity headers, keep-alive pool)
    stunnel        stunnel4, verifyChain + requireCert (L4)
    nginx-stream   nginx stream { ssl_verify_client on; proxy_pass } (L4)
    nginx-http     nginx http { ssl_verify_client on; proxy_pass, upstream keepalive } (L7)

Backends and load on CPU 1: nginx answering "hello world" over plain HTTP (the target
of the request workloads), a Python bulk source, bin/mtls-loadgen, the bulk client.

Workloads, each reported per proxy CPU-second (the ratio that holds on a shared machine):

    bulk        GiB through 4 connections (target -> client), MB/s and MB per CPU-second
    keepalive   HTTP/1.1 keep-alive GETs (mtls-loadgen -mode keepalive)
    handshake   a new mTLS connection per GET (mtls-loadgen -mode handshake)
    idle        RSS per idle proxied connection (bench/idle_conns.py -n 1000)

Writes bench/results/proxy-latest.json and proxy-latest.md (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    import mtlskit  # noqa: F401
except ImportError:  # continue in the project's .venv (scripts/setup.sh --test makes it)
    if not VENV_PYTHON.exists():
        subprocess.run([str(ROOT / "scripts" / "setup.sh"), "--test"], check=True)
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])

sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import BenchError, Server  # noqa: E402

PROXIES = ("mtlskit-l4", "mtlskit-l7", "stunnel", "nginx-stream", "nginx-http")
L4 = ("mtlskit-l4", "stunnel", "nginx-stream")
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _nginx_head(tmp: Path, nofile: int) -> str:
    user = ""
    if os.getuid() == 0:
        import grp
        import pwd

        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    return (
        f"{user}\nworker_processes 1;\nworker_rlimit_nofile {nofile};\ndaemon off;\n"
        f"master_process on;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        f"events {{ worker_connections {max(1024, nofile - 64)}; }}\n"
    )


_HTTP_TEMPS = """\
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
"""

_SSL = """\
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {certs}/server.crt;
        ssl_certificate_key {certs}/server.key;
        ssl_client_certificate {certs}/ca.crt;
        ssl_verify_client on;
"""


def start_nginx(kind: str, certs: Path, target: int, cpus: str) -> Server:
    """``backend`` (plain hello world), ``stream`` (L4 proxy) or ``http`` (L7 proxy)."""
    exe = harness.nginx_binary()
    if exe is None:
        raise BenchError("nginx is not installed: run scripts/setup.sh --test")
    port = harness.free_port()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-nginx-{kind}-"))
    nofile = harness.raise_fd_limit()
    conf = _nginx_head(tmp, nofile)
    temps = _HTTP_TEMPS.format(tmp=tmp)
    ssl_lines = _SSL.format(certs=certs.resolve())
    if kind == "backend":
        conf += (
            f"http {{\n{temps}    keepalive_requests 100000000;\n    keepalive_timeout 600s;\n"
            f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
            '        location / { default_type text/plain; return 200 "hello world \\n"; }\n'
            "    }\n}\n"
        )
    elif kind == "stream":
        if not STREAM_MODULE.exists():
            raise BenchError("nginx's stream module is missing: run scripts/setup.sh --test")
        conf = f"load_module {STREAM_MODULE};\n" + conf
        conf += (
            f"stream {{\n    server {{\n        listen 127.0.0.1:{port} ssl backlog=4096;\n"
            f"{ssl_lines}        proxy_pass 127.0.0.1:{target};\n        proxy_timeout 600s;\n"
            "    }\n}\n"
        )
    else:
        conf += (
            f"http {{\n{temps}    keepalive_requests 100000000;\n    keepalive_timeout 600s;\n"
            f"    upstream target {{ server 127.0.0.1:{target}; keepalive 32; }}\n"
            f"    server {{\n        listen 127.0.0.1:{port} ssl backlog=4096;\n{ssl_lines}"
            "        location / {\n"
            "            proxy_pass http://target;\n"
            "            proxy_http_version 1.1;\n"
            '            proxy_set_header Connection "";\n'
            "            proxy_set_header X-Forwarded-For $remote_addr;\n"
            "            proxy_set_header X-Client-Subject $ssl_client_s_dn;\n"
            "            proxy_set_header X-Client-Cert-Hash $ssl_client_fingerprint;\n"
            "        }\n    }\n}\n"
        )
    path = tmp / "nginx.conf"
    path.write_text(conf)
    argv = [exe, "-p", str(tmp), "-c", str(path), "-e", str(tmp / "error.log")]
    return harness._spawn(f"nginx-{kind}", argv, port, cpus, tmp)


def start_stunnel(certs: Path, target: int) -> Server:
    port = harness.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stunnel-"))
    c = certs.resolve()
    conf = tmp / "stunnel.conf"
    conf.write_text(
        "foreground = yes\npid =\ndebug = 3\n"
        f"[proxy]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\n"
        f"cert = {c}/server.crt\nkey = {c}/server.key\nCAfile = {c}/ca.crt\n"
        "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n"
    )
    return harness._spawn("stunnel", ["stunnel4", str(conf)], port, harness.SERVER_CPUS, tmp)


def start_mtlskit(certs: Path, target: int, http: bool) -> Server:
    port = harness.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mtlskit-proxy-"))
    argv = [sys.executable, "-m", "mtlskit", "proxy", "server"]
    argv += ["--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{target}"]
    argv += ["--certs", str(certs), "--allow-all", "--max-connections", "100000"]
    if http:
        argv += ["--http", "--quiet"]
    name = "mtlskit-l7" if http else "mtlskit-l4"
    return harness._spawn(name, argv, port, harness.SERVER_CPUS, tmp)


def start_proxy(name: str, certs: Path, http_target: int, bulk_target: int | None) -> Server:
    target = bulk_target if bulk_target is not None else http_target
    if name == "mtlskit-l4":
        return start_mtlskit(certs, target, http=False)
    if name == "mtlskit-l7":
        return start_mtlskit(certs, target, http=True)
    if name == "stunnel":
        return start_stunnel(certs, target)
    if name == "nginx-stream":
        return start_nginx("stream", certs, target, harness.SERVER_CPUS)
    return start_nginx("http", certs, target, harness.SERVER_CPUS)


# --------------------------------------------------------------------------- bulk


def serve_bulk(port: int) -> None:
    """The bulk source: reads ``N\\n``, sends N bytes, closes (run pinned to CPU 1)."""
    block = memoryview(b"\xa5" * (1 << 20))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def one(conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    return
                line += chunk
            left = int(line)
            while left > 0:
                n = conn.send(block[: min(left, len(block))])
                left -= n

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def bulk_client(port: int, total: int, conns: int, certs: Path) -> None:
    """Download ``total`` bytes through ``conns`` mTLS connections; prints JSON."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.load_cert_chain(certs / "client.crt", certs / "client.key")
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    each = total // conns
    got = [0] * conns
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                s.sendall(b"%d\n" % each)
                buf = bytearray(1 << 20)
                while got[i] < each:
                    n = s.recv_into(buf)
                    if not n:
                        break
                    got[i] += n
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    print(json.dumps({"bytes": sum(got), "seconds": seconds, "errors": errors[:1]}))


def measure_bulk(server: Server, certs: Path, total: int) -> dict[str, Any]:
    cpu0 = harness.cpu_seconds(server.pid)
    argv = ["taskset", "-c", harness.LOAD_CPUS, sys.executable, str(Path(__file__).resolve())]
    argv += ["--bulk-client", str(server.port), "--bytes", str(total), "--certs", str(certs)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise BenchError(f"bulk client failed: {r.stderr.strip()[-300:]}")
    out = json.loads(r.stdout)
    cpu = harness.cpu_seconds(server.pid) - cpu0
    mb = out["bytes"] / 1e6
    return {
        "bytes": out["bytes"],
        "complete": out["bytes"] == total,
        "seconds": round(out["seconds"], 2),
        "mb_per_s": round(mb / out["seconds"], 1),
        "proxy_cpu_s": round(cpu, 2),
        "per_cpu_s": round(mb / cpu, 1) if cpu > 0 else None,
        "first_error": out["errors"][0] if out["errors"] else "",
    }


# --------------------------------------------------------------------------- idle


def measure_idle(server: Server, certs: Path, n: int) -> dict[str, Any]:
    before = harness.rss_bytes(server.pid)
    argv = ["taskset", "-c", harness.LOAD_CPUS, sys.executable, str(HERE / "idle_conns.py")]
    argv += ["--port", str(server.port), "--certs", str(certs), "-n", str(n)]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        opened = json.loads(proc.stdout.readline() or "{}")
        time.sleep(1.0)  # let the proxy settle (freed handshake buffers)
        after = harness.rss_bytes(server.pid)
        proc.stdin.close()
        alive = json.loads(proc.stdout.readline() or "{}")
    finally:
        proc.wait(timeout=60)
    held = int(opened.get("open", 0))
    return {
        "open": held,
        "alive": alive.get("alive"),
        "first_error": opened.get("first_error", ""),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "kib_per_conn": round((after - before) / 1024 / held, 1) if held else None,
    }


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mtlskit.pki.seed import init_seed

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    certs = work / "certs"
    init_seed(certs)
    harness.raise_fd_limit()
    quick = args.quick
    duration = 2.0 if quick else args.duration
    total = (64 << 20) if quick else args.bulk_bytes
    idle_n = 100 if quick else 1000
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": quick,
        "duration_s": duration,
        "bulk_bytes": total,
        "idle_connections": idle_n,
        "proxies": {},
        "notes": [],
    }
    backend = start_nginx("backend", certs, 0, harness.LOAD_CPUS)
    bulk_port = harness.free_port()
    bulk = subprocess.Popen(
        ["taskset", "-c", harness.LOAD_CPUS, sys.executable, str(Path(__file__).resolve()),
         "--serve-bulk", str(bulk_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        harness.wait_for_port(bulk_port, bulk)
        for name in args.proxies:
            entry: dict[str, Any] = {}
            results["proxies"][name] = entry
            # Request workloads and idle memory: the HTTP backend.
            try:
                server = start_proxy(name, certs, backend.port, None)
            except BenchError as exc:
                entry["error"] = str(exc)
                log(f"{name}: {exc}")
                continue
            try:
                # Memory first, on a fresh process: after a load run, freed memory the
                # allocator keeps would absorb the new connections and hide their cost.
                log(f"{name}: {idle_n} idle connections")
                entry["idle"] = measure_idle(server, certs, idle_n)
                for mode in ("keepalive", "handshake"):
                    log(f"{name}: {mode} {duration:g}s")
                    entry[mode] = harness.measure(server, certs, mode, duration, args.connections)
            except BenchError as exc:
                entry["error"] = str(exc)
                log(f"{name}: {exc}")
            finally:
                server.stop()
            if name not in L4:
                continue
            try:
                server = start_proxy(name, certs, backend.port, bulk_port)
            except BenchError as exc:
                entry["bulk_error"] = str(exc)
                continue
            try:
                log(f"{name}: bulk {total / 2**20:.0f} MiB through 4 connections")
                entry["bulk"] = measure_bulk(server, certs, total)
            except BenchError as exc:
                entry["bulk_error"] = str(exc)
                log(f"{name}: {exc}")
            finally:
                server.stop()
    finally:
        bulk.terminate()
        bulk.wait()
        backend.stop()
    return results


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def render(results: dict[str, Any]) -> str:
    p = results["proxies"]

    def val(name: str, *keys: str) -> float | None:
        cur: Any = p.get(name, {})
        for k in keys:
            cur = cur.get(k) if isinstance(cur, dict) else None
        return cur if isinstance(cur, int | float) else None

    lines = [
        f"# mtlskit proxy bench, {results['when']}"
        + (" (--quick: not figures to quote)" if results["quick"] else ""),
        "",
        "Proxy on CPU 0, load and backends on CPU 1; per proxy CPU-second.",
        "",
        "| workload | " + " | ".join(p) + " | l4/stunnel | l4/nginx-stream | l7/nginx-http |",
        "|---|" + "--:|" * (len(p) + 3),
    ]
    rows = [
        ("bulk MB per CPU-s", ("bulk", "per_cpu_s")),
        ("bulk MB/s (wall)", ("bulk", "mb_per_s")),
        ("keep-alive req per CPU-s", ("keepalive", "per_cpu_s")),
        ("keep-alive req/s (wall)", ("keepalive", "rate")),
        ("new mTLS conn per CPU-s", ("handshake", "per_cpu_s")),
        ("new mTLS conn/s (wall)", ("handshake", "rate")),
        ("idle KiB per connection", ("idle", "kib_per_conn")),
    ]
    for label, keys in rows:
        cells = []
        for name in p:
            v = val(name, *keys)
            cells.append("–" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}")
        l4, l7 = val("mtlskit-l4", *keys), val("mtlskit-l7", *keys)
        ratios = [_ratio(l4, val("stunnel", *keys)), _ratio(l4, val("nginx-stream", *keys)),
                  _ratio(l7, val("nginx-http", *keys))]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    errors = [f"- {n}: {e.get('error') or e.get('bulk_error')}" for n, e in p.items()
              if e.get("error") or e.get("bulk_error")]  # fmt: skip
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds, tiny sizes")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    ap.add_argument("--connections", type=int, default=16, help="loadgen connections")
    ap.add_argument("--bulk-bytes", type=int, default=1 << 30, help="bulk total (4 conns)")
    ap.add_argument("--proxies", nargs="+", default=list(PROXIES), choices=PROXIES)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--serve-bulk", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bulk-client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bulk:
        serve_bulk(args.serve_bulk)
        return
    if args.bulk_client:
        bulk_client(args.bulk_client, args.bytes, 4, args.certs)
        return
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    (args.out / "proxy-latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
