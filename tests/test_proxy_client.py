"""`mtlskit proxy client` (plain in, mTLS out), alone and paired with server mode:
PostgreSQL's psql across two proxies, a TCP echo with half-close, the server's name."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mtlskit.pki.ca import CA
from tests.support.processes import free_port, run_cli
from tests.support.proxy import (
    TCPBackend,
    echo_after_eof,
    read_to_eof,
    start_proxy,
)
from tests.support.server import write_files

Procs = list[subprocess.Popen[bytes]]


def pair(procs: Procs, tmp: Path, certs: Path, target: str, *client_args: str) -> int:
    """server mode in front of ``target``, client mode in front of it: the client's port."""
    server = start_proxy(
        procs, tmp, "server", "--target", target, "--certs", certs, "--allow-cn", "client"
    )
    client = start_proxy(
        procs, tmp, "client", "--target", f"127.0.0.1:{server.port}", "--certs", certs,
        "--server-name", "localhost", *client_args,
    )  # fmt: skip
    return client.port


def test_psql_across_two_proxies(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path, postgres_url: str
) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed: run scripts/setup.sh --test")
    url = urlsplit(postgres_url)
    port = pair(procs, tmp_path, seed_certs_p256, f"127.0.0.1:{url.port}")
    r = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", url.path[1:],
         "-X", "-A", "-t", "-c", "select 1 + 1, current_user"],
        capture_output=True, text=True, timeout=60,
        env={"PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2|postgres"


def test_echo_with_half_close_across_two_proxies(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    b = TCPBackend(echo_after_eof).start()
    try:
        port = pair(procs, tmp_path, seed_certs_p256, f"127.0.0.1:{b.port}")
        payload = b"0123456789" * 200_000  # 2 MB
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # plain FIN -> close_notify -> FIN to the echo
            assert read_to_eof(s) == b"got:" + payload
    finally:
        b.stop()


def test_the_server_name_is_verified(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    b = TCPBackend(echo_after_eof).start()
    try:
        port = pair(
            procs, tmp_path, seed_certs_p256, f"127.0.0.1:{b.port}"
        )  # verifies "localhost": fine
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ok")
            s.shutdown(socket.SHUT_WR)
            assert read_to_eof(s) == b"got:ok"
        server = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        wrong = start_proxy(
            procs, tmp_path, "client", "--target", f"127.0.0.1:{server.port}",
            "--certs", seed_certs_p256, "--server-name", "db.example.com",
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", wrong.port), timeout=10) as s:
            s.sendall(b"secret")
            assert read_to_eof(s) == b""
        line = wrong.wait_log("TLS handshake with the target")
        assert "db.example.com" in line and "(cert_invalid)" in line
        assert "for 127.0.0.1:" in line
    finally:
        b.stop()


def test_a_server_of_another_ca_is_refused(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    other = CA.create("/CN=Other CA", key_type="p256", days=30)
    impostor = other.issue("server", "/CN=localhost", sans=["DNS:localhost"])
    certs = tmp_path / "impostor"
    write_files(
        certs,
        {
            "ca.crt": (seed_certs_p256 / "ca.crt").read_bytes(),
            "server.crt": impostor.cert_pem,
            "server.key": impostor.key_pem(),
        },
    )
    b = TCPBackend(echo_after_eof).start()
    try:
        server = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", certs, "--allow-all",
        )  # fmt: skip
        client = start_proxy(
            procs, tmp_path, "client", "--target", f"127.0.0.1:{server.port}",
            "--certs", seed_certs_p256, "--server-name", "localhost",
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as s:
            s.sendall(b"secret")
            assert read_to_eof(s) == b""
        client.wait_log("(cert_untrusted)")
        assert b.accepted == 0
    finally:
        b.stop()


def test_a_client_the_server_does_not_allow(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    b = TCPBackend(echo_after_eof).start()
    try:
        server = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-cn", "someone-else",
        )  # fmt: skip
        client = start_proxy(
            procs, tmp_path, "client", "--target", f"127.0.0.1:{server.port}",
            "--certs", seed_certs_p256, "--server-name", "localhost",
        )  # fmt: skip
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as s:
            s.sendall(b"secret")
            s.shutdown(socket.SHUT_WR)
            assert read_to_eof(s) == b""
        server.wait_log("refused CN=client from 127.0.0.1:")
        assert b.accepted == 0
    finally:
        b.stop()


def test_target_down(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    dead = free_port()
    client = start_proxy(
        procs, tmp_path, "client", "--target", f"127.0.0.1:{dead}", "--certs", seed_certs_p256,
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as s:
        assert read_to_eof(s) == b""
    line = client.wait_log("cannot reach the target")
    assert f"127.0.0.1:{dead} for 127.0.0.1:" in line and "connection refused" in line


def test_listening_beyond_loopback_needs_unsafe_listen(seed_certs_p256: Path) -> None:
    r = run_cli(
        "proxy", "client", "--listen", "0.0.0.0:7000", "--target", "db.example.com:5432",
        "--certs", seed_certs_p256,
    )  # fmt: skip
    assert r.returncode == 2
    assert "whoever connects uses this client's certificate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
