"""The processes under measurement: pinned servers, the load generator, /proc readings.

Benchmark hygiene (bench/README.md): the server runs on CPU 0, the load
generator on CPU 1, Go gets GOMAXPROCS=1, and what counts is requests per
*server CPU-second*, read from /proc before and after each run, with every
peer measured in the same run.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"
LOADGEN = BIN / "mtls-loadgen"
SEED_SERVER = BIN / "seed-server"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVER_CPUS = "0"
LOAD_CPUS = "1"


class BenchError(Exception):
    """A peer could not be started or measured; the run notes it and goes on."""


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (nginx master + worker, server workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants (threads included)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        # fields after comm: state(0) ppid(1) ... utime(11) stime(12)
        ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def cpu_seconds_of(pid: int) -> float:
    """utime + stime of ``pid`` alone (0 once it is gone)."""
    try:
        f = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """VmRSS summed over ``pid`` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children inherit it); return the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    # (Generous: on a loaded 2-core machine a Python server may take long to import.)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@dataclass
class Server:
    """A running server process (the pid taskset exec'd into) and its scratch folder."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Our own process group (start_new_session), so nginx's worker goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


def _spawn(
    name: str,
    argv: list[str],
    port: int,
    cpus: str,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> Server:
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", cpus, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=workdir,
            start_new_session=True,
        )
    server = Server(name, port, proc, workdir, log)
    try:
        wait_for_port(port, proc)
    except BenchError as exc:
        tail = server.log_tail()  # before stop(), which removes the folder
        server.stop()
        raise BenchError(f"{name}: {exc}: {tail}") from exc
    return server


def mtlskit_available() -> str | None:
    """None when ``mtlskit serve`` exists, else why it is skipped."""
    r = subprocess.run(
        [sys.executable, "-m", "mtlskit", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return "mtlskit serve is not available yet: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def start_mtlskit(
    certs: Path,
    cpus: str = SERVER_CPUS,
    workers: int = 1,
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
    args: list[str] | None = None,
) -> Server:
    """``mtlskit serve`` (or ``launcher serve``: an experiment that patches the server),
    with more ``args`` (``--crl FILE`` …, or an APP)."""
    port = free_port()
    argv = [*(launcher or [sys.executable, "-m", "mtlskit"]), "serve", "--certs", str(certs)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--quiet", *(args or [])]
    if workers > 1:
        argv += ["--workers", str(workers)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-mtlskit-"))
    return _spawn("mtlskit", argv, port, cpus, workdir, env=env)


def start_go(certs: Path, cpus: str = SERVER_CPUS, procs: int = 1) -> Server:
    if not SEED_SERVER.exists():
        raise BenchError(f"{SEED_SERVER} is missing: run scripts/setup.sh --test")
    port = free_port()
    argv = [str(SEED_SERVER), "-addr", f"127.0.0.1:{port}", "-certs", str(certs), "-quiet"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-go-"))
    return _spawn("go", argv, port, cpus, workdir, env={"GOMAXPROCS": str(procs)})


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


NGINX_CONF = """\
{user}
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {certs}/server.crt;
        ssl_certificate_key {certs}/server.key;
        ssl_client_certificate {certs}/ca.crt;
        ssl_verify_client on;
        location / {{
            default_type text/plain;
            return 200 "hello world \\n";
        }}
    }}
}}
"""


def start_nginx(certs: Path, cpus: str = SERVER_CPUS) -> Server:
    exe = nginx_binary()
    if exe is None:
        raise BenchError("nginx is not installed: run scripts/setup.sh --test")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    user = ""
    if os.getuid() == 0:
        # A root master would hand the worker to "nobody"; keep the current user.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    nofile = raise_fd_limit()
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user=user,
            tmp=workdir,
            port=port,
            certs=certs.resolve(),
            nofile=nofile,
            conns=max(1024, nofile - 64),
        )
    )
    argv = [exe, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")]
    return _spawn("nginx", argv, port, cpus, workdir)


# --------------------------------------------------------------------------- load


def loadgen(
    addr: str,
    certs: Path,
    mode: str,
    duration: float,
    connections: int,
    cpus: str = LOAD_CPUS,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """One run of bin/mtls-loadgen; ``sources``: the loopback addresses it connects from
    (each a client with its own session cache)."""
    if not LOADGEN.exists():
        raise BenchError(f"{LOADGEN} is missing: run scripts/setup.sh --test")
    argv = ["taskset", "-c", cpus, str(LOADGEN), "-addr", addr, "-certs", str(certs)]
    argv += ["-mode", mode, "-d", f"{duration:g}s", "-c", str(connections)]
    if sources:
        argv += ["-source", ",".join(sources)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if r.returncode != 0:
        raise BenchError(f"mtls-loadgen failed ({r.returncode}): {r.stderr.strip()}")
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def measure(
    server: Server,
    certs: Path,
    mode: str,
    duration: float,
    connections: int,
    load_cpus: str = LOAD_CPUS,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """One load run against ``server``: rate, and requests per server CPU-second (and the
    CPU seconds of each process of the server: a supervisor's workers)."""
    if server.proc.poll() is not None:
        raise BenchError(f"{server.name} exited with {server.proc.returncode}: {server.log_tail()}")
    pids = process_tree(server.pid)
    before = {p: cpu_seconds_of(p) for p in pids}
    lg = loadgen(server.addr, certs, mode, duration, connections, load_cpus, sources)
    per_process = {p: cpu_seconds_of(p) - before[p] for p in pids}
    cpu = sum(per_process.values())
    ok = int(lg["ok"])
    return {
        "rate": lg["rate_per_s"],
        "ok": ok,
        "errors": lg["errors"],
        "first_error": lg.get("first_error", ""),
        "seconds": lg["seconds"],
        "server_cpu_s": round(cpu, 3),
        "server_cpu_util": round(cpu / lg["seconds"], 3) if lg["seconds"] else None,
        "per_cpu_s": round(ok / cpu, 1) if cpu > 0 else None,
        "p50_ms": lg["p50_ms"],
        "p99_ms": lg["p99_ms"],
        "resumed": lg["resumed"],
        "tls_version": lg["tls_version"],
        "connections": connections,
        "process_cpu_s": [round(c, 3) for c in per_process.values()],
        "sources": lg.get("sources", []),
    }
