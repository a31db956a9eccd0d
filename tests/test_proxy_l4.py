"""`mtlskit proxy server` in L4 mode: real processes, real TCP backends, real handshakes."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtlskit.pki.ca import CA
from tests.support.processes import free_port, run_cli
from tests.support.proxy import (
    TCPBackend,
    TLSClient,
    client_ssl_context,
    close_clients,
    echo,
    echo_after_eof,
    free_unix_path,
    read_to_eof,
    rss_kib,
    start_proxy,
)
from tests.support.server import write_files

Procs = list[subprocess.Popen[bytes]]

_close_clients = pytest.fixture(autouse=True)(close_clients)


@pytest.fixture
def backend() -> Iterator[TCPBackend]:
    b = TCPBackend(echo_after_eof).start()
    yield b
    b.stop()


def _server(procs: Procs, tmp: Path, certs: Path, target: str, *args: str) -> object:
    return start_proxy(
        procs, tmp, "server", "--target", target, "--certs", certs, "--watch-interval", "0.2", *args
    )


def test_bytes_both_ways_and_client_half_close(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path, backend: TCPBackend
) -> None:
    proxy = start_proxy(
        procs, tmp_path, "server", "--target", f"127.0.0.1:{backend.port}",
        "--certs", seed_certs_p256, "--allow-cn", "client",
    )  # fmt: skip
    for tls_version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ssl_context(seed_certs_p256)
        ctx.maximum_version = tls_version
        c = TLSClient(proxy.port, ctx)
        c.send(b"hello ")
        c.send(b"proxy")
        c.close_notify()  # the target sees EOF, answers after it
        assert c.recv_until_end() == b"got:hello proxy"
        assert c.got_close_notify  # the target's FIN became close_notify
        c.close()
    # A FIN without close_notify ends the stream too.
    c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
    c.send(b"fin")
    c.shutdown_write()
    assert c.recv_until_end() == b"got:fin"
    c.close()


def test_target_half_close_lets_the_client_go_on(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    got: list[bytes] = []

    def banner_then_read(conn: socket.socket) -> None:
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)  # the target is done talking, still listening
        got.append(read_to_eof(conn))

    b = TCPBackend(banner_then_read).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))  # TLS 1.3
        assert c.recv_until_end() == b"banner"
        assert c.got_close_notify
        c.send(b"after the target's close_notify")
        c.close_notify()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [b"after the target's close_notify"]
        c.close()
    finally:
        b.stop()


def test_large_transfer_both_ways(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    b = TCPBackend(echo).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        ctx = client_ssl_context(seed_certs_p256)
        payload = bytes(range(256)) * 4096 * 8  # 8 MiB
        with (
            socket.create_connection(("127.0.0.1", proxy.port)) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            received = bytearray()

            def reader() -> None:
                while chunk := s.recv(1 << 16):
                    received.extend(chunk)
                    if len(received) >= len(payload):
                        return

            t = threading.Thread(target=reader)
            t.start()
            s.sendall(payload)
            t.join(60)
        assert bytes(received) == payload
    finally:
        b.stop()


def test_backpressure_keeps_memory_bounded(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    """A target that stops reading: the client's sends stall; the proxy does not buffer."""
    release = threading.Event()

    def stalled(conn: socket.socket) -> None:
        release.wait(60)

    b = TCPBackend(stalled).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        before = rss_kib(proxy.proc.pid)
        ctx = client_ssl_context(seed_certs_p256)
        raw = socket.create_connection(("127.0.0.1", proxy.port))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.settimeout(2.0)
        chunk = b"x" * (1 << 16)
        sent = 0
        try:
            while sent < 512 * 1024 * 1024:
                s.sendall(chunk)
                sent += len(chunk)
        except TimeoutError:
            pass  # the send buffer is full: backpressure reached the client
        grown = rss_kib(proxy.proc.pid) - before
        release.set()
        s.close()
        # Kernel buffers on both sockets hold some MiB; the proxy holds about a buffer.
        assert sent < 64 * 1024 * 1024, sent
        assert grown < 16 * 1024, f"proxy RSS grew {grown} KiB"
    finally:
        release.set()
        b.stop()


def test_a_client_that_does_not_read_stalls_the_target(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    sent = [0]
    done = threading.Event()

    def flood(conn: socket.socket) -> None:
        conn.settimeout(3.0)
        chunk = b"y" * (1 << 16)
        try:
            while sent[0] < 512 * 1024 * 1024:
                conn.sendall(chunk)
                sent[0] += len(chunk)
        except TimeoutError:
            pass
        done.set()

    b = TCPBackend(flood).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        before = rss_kib(proxy.proc.pid)
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        c.send(b"go")  # never reads after this
        assert done.wait(60)
        grown = rss_kib(proxy.proc.pid) - before
        assert sent[0] < 64 * 1024 * 1024, sent[0]
        assert grown < 16 * 1024, f"proxy RSS grew {grown} KiB"
        c.close()
    finally:
        b.stop()


def test_unix_socket_target(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    path = free_unix_path(tmp_path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            echo_after_eof(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    proxy = start_proxy(
        procs, tmp_path, "server", "--target", f"unix:{path}",
        "--certs", seed_certs_p256, "--allow-san", "DNS:localhost", "--allow-cn", "client",
    )  # fmt: skip
    c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
    c.send(b"over unix")
    c.close_notify()
    assert c.recv_until_end() == b"got:over unix"
    listener.close()


def test_target_down_is_one_log_line_naming_the_client(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    dead = free_port()
    proxy = start_proxy(
        procs, tmp_path, "server", "--target", f"127.0.0.1:{dead}",
        "--certs", seed_certs_p256, "--allow-all",
    )  # fmt: skip
    c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
    c.send(b"anyone?")
    assert c.recv_until_end() == b""
    log = proxy.wait_log("cannot reach the target")
    line = next(x for x in log.splitlines() if "cannot reach the target" in x)
    assert f"127.0.0.1:{dead}" in line
    assert "for CN=client from 127.0.0.1:" in line
    assert "from 127.0.0.1:" in line and "connection refused" in line
    assert log.count("cannot reach the target") == 1


def test_connect_timeout(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    # A listener with a full backlog: SYNs go unanswered, as for a host that is down.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            f.connect(("127.0.0.1", port))
        fillers.append(f)
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{port}",
            "--certs", seed_certs_p256, "--allow-all", "--connect-timeout", "0.5",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        start = time.monotonic()
        assert c.recv_until_end() == b""
        assert time.monotonic() - start < 5
        proxy.wait_log("no answer within 0.5s (--connect-timeout)")
    finally:
        for f in fillers:
            f.close()
        full.close()


def test_idle_timeout_closes(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    b = TCPBackend(echo).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all", "--idle-timeout", "0.6",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        c.send(b"ping")
        assert c.recv_exactly(4) == b"ping"
        start = time.monotonic()
        assert c.recv_until_end() == b""  # closed by the proxy, with close_notify
        assert c.got_close_notify
        assert 0.4 < time.monotonic() - start < 5
    finally:
        b.stop()


def test_connection_limit(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    b = TCPBackend(echo).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all", "--max-connections", "2",
        )  # fmt: skip
        ctx = client_ssl_context(seed_certs_p256)
        held = [TLSClient(proxy.port, ctx) for _ in range(2)]
        for c in held:
            c.send(b"x")
            assert c.recv_exactly(1) == b"x"
        with pytest.raises((ssl.SSLError, OSError)), TLSClient(proxy.port, ctx) as extra:
            extra.send(b"x")
            if not extra.recv_some():
                raise ConnectionResetError("closed")
        proxy.wait_log("connections are open (--max-connections)")
        held[0].close()
        deadline = time.monotonic() + 10
        while True:  # a slot frees when the proxy sees the close
            try:
                with TLSClient(proxy.port, ctx) as again:
                    again.send(b"y")
                    if again.recv_exactly(1) == b"y":
                        break
            except (ssl.SSLError, OSError):
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        held[1].close()
    finally:
        b.stop()


def test_drain_on_sigterm(procs: Procs, tmp_path: Path, seed_certs_p256: Path) -> None:
    b = TCPBackend(echo).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-all",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        c.send(b"before")
        assert c.recv_exactly(6) == b"before"
        proxy.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # new connections are refused once the listener is closed
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            except OSError:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        c.send(b"during the drain")  # the open stream goes on
        assert c.recv_exactly(16) == b"during the drain"
        assert proxy.proc.poll() is None
        c.close_notify()
        assert c.recv_until_end() == b""
        assert proxy.proc.wait(timeout=10) == 0
    finally:
        b.stop()


def test_reload_on_file_change_and_metrics(procs: Procs, tmp_path: Path) -> None:
    ca = CA.create("/CN=Proxy CA", key_type="p256", days=30)
    first = ca.issue("server", "/CN=first", sans=["DNS:localhost"])
    second = ca.issue("server", "/CN=second", sans=["DNS:localhost"])
    client = ca.issue("client", "/CN=client")
    certs = tmp_path / "certs"
    write_files(
        certs,
        {
            "ca.crt": ca.cert_pem,
            "server.crt": first.cert_pem,
            "server.key": first.key_pem(),
            "client.crt": client.cert_pem,
            "client.key": client.key_pem(),
        },
    )
    b = TCPBackend(echo).start()
    metrics = free_port()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", certs, "--allow-all", "--watch-interval", "0.1",
            "--metrics-port", str(metrics),
        )  # fmt: skip

        def server_cn() -> str:
            ctx = client_ssl_context(certs)
            with (
                socket.create_connection(("127.0.0.1", proxy.port)) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as s,
            ):
                s.sendall(b"z")
                assert s.recv(1) == b"z"
                cert = s.getpeercert()
                return dict(x[0] for x in cert["subject"])["commonName"]

        assert server_cn() == "first"
        write_files(certs, {"server.crt": second.cert_pem, "server.key": second.key_pem()})
        proxy.wait_log("reloaded certificates")
        assert server_cn() == "second"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read()
        text_s = text.decode()
        assert 'mtlskit_handshakes_total{outcome="ok",reason=""} 2' in text_s
        assert 'mtlskit_upstream_connections_total{result="ok"} 2' in text_s
        assert 'mtlskit_tls_reloads_total{result="ok"} 1' in text_s
        # SIGHUP reloads as serve does.
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while proxy.log().count("reloaded certificates") < 2:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.02)
    finally:
        b.stop()


def test_refused_clients_each_one_log_line(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    b = TCPBackend(echo).start()
    other = CA.create("/CN=Other CA", key_type="p256", days=30)
    stranger = other.issue("client", "/CN=stranger")
    strangers = tmp_path / "strangers"
    write_files(
        strangers,
        {
            "ca.crt": (seed_certs_p256 / "ca.crt").read_bytes(),
            "client.crt": stranger.cert_pem,
            "client.key": stranger.key_pem(),
        },
    )
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"127.0.0.1:{b.port}",
            "--certs", seed_certs_p256, "--allow-cn", "someone-else",
        )  # fmt: skip
        for ctx in (
            client_ssl_context(seed_certs_p256, cert=False),  # no certificate
            client_ssl_context(strangers),  # another CA's
            client_ssl_context(seed_certs_p256),  # verified, but no rule allows it
        ):
            try:
                with TLSClient(proxy.port, ctx) as c:
                    c.send(b"let me in")
                    assert c.recv_until_end() == b""
            except (ssl.SSLError, OSError):
                pass
        log = proxy.wait_log("no --allow-cn/--allow-san rule matches")
        assert "the client sent no certificate (no_client_cert)" in log
        assert "(cert_untrusted)" in log
        refused = [x for x in log.splitlines() if "refused CN=client" in x]
        assert len(refused) == 1 and "from 127.0.0.1:" in refused[0]
        assert b.accepted == 0  # nothing reached the target
    finally:
        b.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "127.0.0.1:5432"], "an access rule is required"),
        (["--target", "10.1.2.3:5432", "--allow-all"], "is not on this machine"),
        (["--target", "db.example.com:5432", "--allow-all"], "is not on this machine"),
        (["--target", "127.0.0.1:5432", "--allow-all", "--allow-cn", "x"], "cannot be combined"),
        (["--target", "127.0.0.1", "--allow-all"], "is not HOST:PORT"),
        (
            ["--target", "127.0.0.1:1", "--allow-all", "--http", "--proxy-protocol"],
            "--proxy-protocol is for L4",
        ),
        (["--target", "127.0.0.1:1", "--allow-all", "--xfcc-fields", "Hash,Nope"], "Nope"),
    ],
)
def test_unsafe_or_wrong_options_are_refused(
    seed_certs_p256: Path, args: list[str], message: str
) -> None:
    r = run_cli("proxy", "server", "--listen", "127.0.0.1:1", "--certs", seed_certs_p256, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_listen_must_name_its_host(seed_certs_p256: Path) -> None:
    r = run_cli(
        "proxy", "server", "--listen", ":8443", "--target", "127.0.0.1:1", "--allow-all",
        "--certs", seed_certs_p256,
    )  # fmt: skip
    assert r.returncode == 2
    assert "say 127.0.0.1:8443 for this machine, or 0.0.0.0:8443 for every interface" in r.stderr


def test_unsafe_target_is_allowed_by_name(
    procs: Procs, tmp_path: Path, seed_certs_p256: Path
) -> None:
    name = socket.gethostname()  # a name, not an address: it could resolve anywhere
    if socket.gethostbyname(name) != "127.0.0.1":
        pytest.skip(f"{name} does not resolve to 127.0.0.1 here")
    b = TCPBackend(echo_after_eof).start()
    try:
        proxy = start_proxy(
            procs, tmp_path, "server", "--target", f"{name}:{b.port}",
            "--certs", seed_certs_p256, "--allow-all", "--unsafe-target",
        )  # fmt: skip
        c = TLSClient(proxy.port, client_ssl_context(seed_certs_p256))
        c.send(b"named")
        c.close_notify()
        assert c.recv_until_end() == b"got:named"
    finally:
        b.stop()
