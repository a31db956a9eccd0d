"""Helpers for the proxy tests: start `mtlskit proxy`, real backends (TCP, nginx), a TLS
client that can half-close."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mtlskit.tls import client_context
from tests.support.processes import Running, free_port, start_cli, wait_for_port


class Proxy(Running):
    """A running `mtlskit proxy` process."""


def start_proxy(
    procs: list[subprocess.Popen[bytes]],
    log_dir: Path,
    mode: str,
    *args: str | Path,
    port: int | None = None,
    wait: bool = True,
) -> Proxy:
    """``mtlskit proxy MODE --listen 127.0.0.1:PORT ARGS`` (polled until it listens)."""
    port = port or free_port()
    log_path = log_dir / f"proxy-{mode}-{port}.log"
    argv = ["proxy", mode, "--listen", f"127.0.0.1:{port}", *args]
    proc = start_cli(procs, argv, port=port, log_path=log_path, wait=wait)
    return Proxy(proc, port, log_path)


def client_ssl_context(certs: Path, *, cert: bool = True) -> ssl.SSLContext:
    if cert:
        return client_context(certs / "ca.crt", certs / "client.crt", certs / "client.key")
    return client_context(certs / "ca.crt")


OPEN_CLIENTS: list[TLSClient] = []


def close_clients(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Fixture body: every TLSClient a test opened is closed after it, before its
    processes are stopped (a draining proxy waits for them)."""
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()


class TLSClient:
    """A blocking TLS client over memory BIOs, so it can send close_notify and go on
    reading (half-close), which ssl.SSLSocket cannot."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, server_name: str = "localhost") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        OPEN_CLIENTS.append(self)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=server_name)
        self.got_close_notify = False
        self.eof = False
        try:
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._pump()
                    if not self._read_more():
                        raise ConnectionResetError("closed during the handshake") from None
            self._pump()
        except BaseException:
            self.sock.close()
            raise

    def _pump(self) -> None:
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def _read_more(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._pump()

    def close_notify(self) -> None:
        """Send close_notify; reading goes on."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.unwrap()
        self._pump()

    def shutdown_write(self) -> None:
        """A TCP FIN without close_notify."""
        self.sock.shutdown(socket.SHUT_WR)

    def recv_some(self) -> bytes:
        """What arrives next (b"" at close_notify or EOF)."""
        while True:
            try:
                data = self.obj.read(65536)
                if not data:
                    self.got_close_notify = True
                return data
            except ssl.SSLZeroReturnError:
                self.got_close_notify = True
                return b""
            except ssl.SSLWantReadError:
                if self.eof or not self._read_more():
                    return b""
            except ssl.SSLEOFError:
                return b""

    def recv_until_end(self) -> bytes:
        parts = []
        while chunk := self.recv_some():
            parts.append(chunk)
        return b"".join(parts)

    def recv_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.recv_some()
            if not chunk:
                break
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TLSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TCPBackend:
    """A real TCP server in a thread; ``handler(conn)`` runs per connection."""

    handler: Callable[[socket.socket], None]
    port: int = 0
    sock: socket.socket | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    accepted: int = 0

    def start(self) -> TCPBackend:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        t = threading.Thread(target=self._serve, daemon=True)
        t.start()
        return self

    def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


def read_to_eof(conn: socket.socket) -> bytes:
    parts = []
    while chunk := conn.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def echo_after_eof(conn: socket.socket) -> None:
    """Read everything until the client's FIN, then answer and close."""
    data = read_to_eof(conn)
    conn.sendall(b"got:" + data)
    conn.shutdown(socket.SHUT_WR)


def echo(conn: socket.socket) -> None:
    """Echo as it comes; FIN after the client's FIN."""
    while chunk := conn.recv(65536):
        conn.sendall(chunk)
    conn.shutdown(socket.SHUT_WR)


def free_unix_path(folder: Path) -> Path:
    return folder / f"s{free_port()}.sock"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    {log_format_line}
    access_log {tmp}/access.log {log_format};
    server {{
        listen 127.0.0.1:{port}{listen_flags};
        {server}
    }}
}}
"""


def nginx_binary() -> str:
    import shutil

    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        import pytest

        pytest.fail("nginx is not installed: run scripts/setup.sh --test")
    return exe


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    def access_log(self) -> str:
        path = self.folder / "access.log"
        return path.read_text() if path.exists() else ""


def start_nginx(
    procs: list[subprocess.Popen[bytes]],
    folder: Path,
    server: str,
    *,
    listen_flags: str = "",
    log_format: str = "",
) -> Nginx:
    """A plain-HTTP nginx on 127.0.0.1 (one process, stopped with the test)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=folder,
            port=port,
            listen_flags=listen_flags,
            server=server,
            log_format="test" if log_format else "combined",
            log_format_line=f"log_format test '{log_format}';" if log_format else "",
        )
    )
    exe = nginx_binary()
    out = (folder / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [exe, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    procs.append(proc)
    wait_for_port(port, proc)
    return Nginx(proc, port, folder)
