"""Resumption across workers: with --workers N a client returns to the worker holding its
session (SO_REUSEPORT steered by client address, server/affinity.py).

Measured with the Go load generator in resume mode from 16 loopback addresses
(127.0.0.1-16, each a client with its own session cache): ≥ 95 % of the
connections resume with 2 and 4 workers, and every worker carries its share of
the clients. ``--no-worker-affinity`` leaves the kernel's spread (1 in N resumes).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mtlskit.server.affinity import client_affinity_program
from tests.support.processes import free_port, go_binary
from tests.support.server import Served, start_serve

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)"
)

SOURCES = [f"127.0.0.{i}" for i in range(1, 17)]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports (worker i serves metrics on base + i)."""
    for _ in range(50):
        base = free_port()
        try:
            for i in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise RuntimeError("no consecutive free ports")


def handshakes(port: int) -> int:
    """The worker's successful handshakes (its metrics port), polled until it answers."""
    for _ in range(500):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except OSError:  # the worker is not up yet: ask again
            time.sleep(0.02)
    else:
        raise TimeoutError(f"no metrics on port {port}")
    m = re.search(r'^mtlskit_handshakes_total\{outcome="ok"[^}]*\} (\d+)', text, re.M)
    return int(m.group(1)) if m else 0


def serve_workers(
    procs: list[subprocess.Popen[bytes]], certs: Path, log_dir: Path, workers: int, *args: str
) -> tuple[Served, int]:
    metrics = free_ports(workers)
    s = start_serve(
        procs,
        certs,
        log_dir,
        *("--workers", str(workers), "--quiet", "--metrics-port", str(metrics), *args),
    )
    for i in range(workers):  # every worker listens (and steers) before the load starts
        handshakes(metrics + i)
    return s, metrics


def resume_load(port: int, certs: Path, sources: list[str], host: str = "127.0.0.1") -> Any:
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [str(go_binary("mtls-loadgen")), "-addr", addr, "-certs", str(certs)]
    argv += ["-mode", "resume", "-d", "3s", "-c", "16", "-source", ",".join(sources)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] == 0, out["first_error"]
    assert out["ok"] > 100, out
    return out


@pytest.mark.parametrize("workers", [2, 4])
def test_clients_resume_on_the_worker_that_holds_their_session(
    procs: list[subprocess.Popen[bytes]], seed_certs_p256: Path, tmp_path: Path, workers: int
) -> None:
    s, metrics = serve_workers(procs, seed_certs_p256, tmp_path, workers)
    out = resume_load(s.port, seed_certs_p256, SOURCES)
    assert out["resumed"] >= 0.95 * out["ok"], out
    for src in out["sources"]:  # every client, not just most of them
        assert src["resumed"] >= 0.9 * src["ok"], src
    # 16 addresses over N workers: each worker serves its share of the clients.
    counts = [handshakes(metrics + i) for i in range(workers)]
    assert sum(counts) >= out["ok"], counts
    assert min(counts) >= 0.4 * sum(counts) / workers, counts
    assert s.stop() == 0
    assert "cannot keep each client on one worker" not in s.log()


def test_without_affinity_a_client_resumes_one_time_in_n(
    procs: list[subprocess.Popen[bytes]], seed_certs_p256: Path, tmp_path: Path
) -> None:
    s, _ = serve_workers(procs, seed_certs_p256, tmp_path, 2, "--no-worker-affinity")
    out = resume_load(s.port, seed_certs_p256, SOURCES)
    assert out["resumed"] < 0.75 * out["ok"], out  # about half
    assert s.stop() == 0


def test_ipv6_clients_keep_their_worker(
    procs: list[subprocess.Popen[bytes]], seed_certs_p256: Path, tmp_path: Path
) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    # Every address: an IPv4 and an IPv6 socket, each group steered by its own program.
    s, _ = serve_workers(procs, seed_certs_p256, tmp_path, 2, "--host", "")
    out = resume_load(s.port, seed_certs_p256, ["::1"], host="::1")
    assert out["resumed"] >= 0.95 * out["ok"], out
    assert s.stop() == 0


def test_the_program_divides_by_the_workers() -> None:
    program = client_affinity_program(3)
    assert program[-2][3] == 3 and program[-1][0] == 0x16  # A % 3, return A
    assert len(program) == 23  # the jumps (2: +2, 4: +10) land on 5 and 15
    with pytest.raises(ValueError):
        client_affinity_program(0)
