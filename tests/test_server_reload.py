"""In-process: ContextHolder.reload() swaps certificates atomically; Stats counts."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from mtlskit.errors import PKIError
from mtlskit.pki.ca import CA
from mtlskit.server import ContextHolder, Server, ServerConfig
from tests.support.server import client_ctx, https, read_responses, tls_socket, write_files


@contextmanager
def running(config: ServerConfig, holder: ContextHolder) -> Iterator[Server]:
    """A Server on its own event loop in a thread, so the test can use blocking clients."""
    loop = asyncio.new_event_loop()
    server = Server(config, holder)
    ready = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
            ready.set()
            loop.run_until_complete(server.serve(install_signals=False))
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=main)
    thread.start()
    ready.wait(10)
    try:
        assert not errors, errors
        yield server
    finally:
        loop.call_soon_threadsafe(server.request_stop)
        thread.join(15)
        loop.close()
    assert not errors, errors


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, list[bytes], list[bytes]]:
    ca = CA.create("/CN=Reload CA", key_type="p256", days=30)
    servers = [ca.issue("server", f"/CN=server{i}", sans=["DNS:localhost"]) for i in range(2)]
    client = ca.issue("client", "/CN=client")
    folder = tmp_path / "certs"
    write_files(
        folder,
        {
            "ca.crt": ca.cert_pem,
            "server.crt": servers[0].cert_pem,
            "server.key": servers[0].key_pem(),
            "client.crt": client.cert_pem,
            "client.key": client.key_pem(),
        },
    )
    return folder, [s.cert_pem for s in servers], [s.key_pem() for s in servers]


def _peer_cn(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def test_reload_swaps_for_new_connections_and_keeps_old_on_failure(
    setup: tuple[Path, list[bytes], list[bytes]],
) -> None:
    folder, certs, keys = setup
    config = ServerConfig(certs=folder, host="127.0.0.1", port=0, quiet=True)
    holder = ContextHolder(config.cert_path, config.key_path, config.ca_path)
    with running(config, holder) as server:
        ctx = client_ctx(folder)
        old = tls_socket(server.port, ctx)
        assert _peer_cn(old) == "server0"
        old.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_responses(old, 1)

        (folder / "server.crt").write_bytes(certs[1])
        (folder / "server.key").write_bytes(keys[1])
        state = holder.reload()
        assert holder.current is state and state.server_cert_pem == certs[1].decode()
        with tls_socket(server.port, ctx) as new:
            assert _peer_cn(new) == "server1"
        # The connection made before the reload keeps working.
        old.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(old, 1).endswith(b"hello world \n")
        old.close()

        # A broken replacement: refused, the previous state keeps serving.
        (folder / "server.crt").write_bytes(b"garbage")
        with pytest.raises(PKIError):
            holder.reload()
        assert holder.current is state
        (folder / "server.crt").write_bytes(certs[0])  # key mismatch (key is server1's)
        assert holder.try_reload() is False
        assert holder.current is state
        with tls_socket(server.port, ctx) as new:
            assert _peer_cn(new) == "server1"
        assert (holder.stats.reloads_ok, holder.stats.reloads_failed) == (1, 2)


def test_stats_count_handshakes_and_requests(
    setup: tuple[Path, list[bytes], list[bytes]],
) -> None:
    folder, _, _ = setup
    config = ServerConfig(certs=folder, host="127.0.0.1", port=0, quiet=True)
    holder = ContextHolder(config.cert_path, config.key_path, config.ca_path)
    with running(config, holder) as server:
        for _ in range(3):
            assert https(server.port, client_ctx(folder))[0] == 200
        no_cert = client_ctx(folder, None, tls_max=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError):
            tls_socket(server.port, no_cert).close()
    snap = server.stats.snapshot()  # after the shutdown: every connection_lost has run
    assert snap["handshakes_ok"] == 3
    assert snap["requests"] == 3
    assert snap["handshake_failures"]["no_client_cert"] == 1
    assert snap["open_connections"] == 0
    assert snap["connections_total"] == 4
