"""`mtlskit get` without click (mtlskit.cli.fastget): taken, light, and saying exactly
what the click command says, byte for byte, for answers and for every failure.

Each case runs twice as a real process against a real server: `python -X importtime
-m mtlskit get ...` (the fast path; importtime shows what it loaded) and the same
`run()` with the fast path switched off (the click command), and compares stdout,
stderr and the exit code.
"""

from __future__ import annotations

import os
import shutil
import socketserver
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mtlskit.cli import fastget
from mtlskit.tls import server_context
from tests.conftest import free_port
from tests.test_client_support import (  # noqa: F401 (fixtures)
    EchoServer,
    OtherPKI,
    echo_server_fixture,
    mtlskit_server_fixture,
    one_line_error,
    other_pki_fixture,
    seed_server_fixture,
    silent_port_fixture,
)

# What the fast path must never load: the click CLI, http.client and what it pulls in,
# cryptography, and the heavier stdlib modules mtlskit.client uses.
HEAVY = ("click", "http", "email", "cryptography", "logging", "typing", "pathlib")
HEAVY += ("dataclasses", "urllib", "json", "tempfile")

_CLICK_ONLY = """
import sys
from mtlskit.cli import fastget, run
fastget.plan = lambda args: None  # the fast path declines: the click command runs
run(sys.argv[1:])
"""


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes  # without importtime's lines
    modules: set[str]  # modules imported (fast path runs only)

    @property
    def packages(self) -> set[str]:
        return {name.split(".")[0] for name in self.modules}

    @property
    def fast(self) -> bool:
        """The fast path ran, not the click group (click.echo may still print a line)."""
        return "mtlskit.cli.fastget" in self.modules and "mtlskit.cli.group" not in self.modules

    @property
    def output(self) -> tuple[int, bytes, bytes]:
        return self.returncode, self.stdout, self.stderr


def _run(
    cmd: list[str], cwd: Path | None, input: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cmd, cwd=cwd, input=input, capture_output=True, timeout=60, env={**os.environ}
    )


def run_fast(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes = b"") -> Ran:
    """`python -X importtime -m mtlskit get ARGS`, as installed users run it."""
    proc = _run(
        [sys.executable, "-X", "importtime", "-m", "mtlskit", "get", *map(str, args)], cwd, input
    )
    imported: set[str] = set()
    rest: list[bytes] = []
    for line in proc.stderr.splitlines(keepends=True):
        if line.startswith(b"import time:"):
            imported.add(line.rsplit(b"|", 1)[1].strip().decode())
        else:
            rest.append(line)
    return Ran(proc.returncode, proc.stdout, b"".join(rest), imported)


def run_click(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes = b"") -> Ran:
    """The same command line through the click command."""
    proc = _run([sys.executable, "-c", _CLICK_ONLY, "get", *map(str, args)], cwd, input)
    return Ran(proc.returncode, proc.stdout, proc.stderr, set())


def both(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes = b"") -> Ran:
    """Run ARGS both ways; assert the fast path was taken and said the same. The fast run."""
    fast = run_fast(*args, cwd=cwd, input=input)
    slow = run_click(*args, cwd=cwd, input=input)
    assert fast.fast, fast.stderr
    assert b"Traceback" not in fast.stderr + slow.stderr, fast.stderr + slow.stderr
    assert fast.output == slow.output
    return fast


# -- the fast path is taken, and light ------------------------------------------------------


def test_fast_path_loads_only_ssl_and_socket(
    seed_certs_p256: Path, mtlskit_server: Callable[[Path], str]
) -> None:
    url = mtlskit_server(seed_certs_p256)
    r = both(url, "--certs", seed_certs_p256)
    assert r.output == (0, b"hello world \n\n", b"")
    assert {"ssl", "socket", "mtlskit"} <= r.packages
    assert not r.packages & set(HEAVY), r.packages & set(HEAVY)


@pytest.mark.interop
@pytest.mark.parametrize("certs_fixture", ["seed_certs_p256", "seed_certs_openssl"])
def test_go_seed_server_and_seed_defaults(
    certs_fixture: str,
    request: pytest.FixtureRequest,
    seed_server: Callable[[Path], str],
    tmp_path: Path,
) -> None:
    certs: Path = request.getfixturevalue(certs_fixture)
    url = seed_server(certs)
    assert both(url, "--certs", certs).output == (0, b"hello world \n\n", b"")
    # The seed's defaults: ./certs, and https:// when the URL has no scheme.
    shutil.copytree(certs, tmp_path / "certs")
    port = url.rsplit(":", 1)[1]
    assert both(f"localhost:{port}", cwd=tmp_path).output == (0, b"hello world \n\n", b"")


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["/things?x=1&y=%20"],
        ["/", "-X", "put", "-d", "a=1", "-H", "X-One: 1", "-H", "Content-Type: text/plain"],
        ["/", "--request=DELETE", "--header=User-Agent: other/1", "--header", "Host: h.example"],
        ["/", "-X", "POST"],  # no body: Content-Length: 0, as http.client
        ["/", "-d", "@-"],
        ["/status/404"],
        ["/status/500", "--timeout", "5"],
        ["/status/204"],
        ["/status/302", "-X", "HEAD"],
    ],
    ids=["query", "put", "long-forms", "post-empty", "stdin", "404", "500", "204", "head"],
)
def test_same_request_and_answer_as_click(
    args: list[str], seed_certs_p256: Path, echo_server: Callable[..., EchoServer]
) -> None:
    # The echo server answers with the request it got (method, path, headers, body):
    # equal output means an equal request, byte for byte.
    srv = echo_server(seed_certs_p256)
    path, *rest = args
    r = both(srv.url + path, "--certs", seed_certs_p256, *rest, input=b"from stdin")
    if path.startswith("/status/4") or path.startswith("/status/5"):
        assert r.returncode == 1
        assert one_line_error(r.stderr.decode()).startswith("error: the server answered ")
    else:
        assert r.returncode == 0, r.stderr


def test_body_from_file_and_resolve(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer], tmp_path: Path
) -> None:
    srv = echo_server(seed_certs_p256)
    body = tmp_path / "body.json"
    body.write_bytes(b'{"k": [1, 2]}')
    url = f"https://www.example.com:{srv.port}/resolved"
    resolve = f"www.example.com:{srv.port}:127.0.0.1"
    r = both(url, "--resolve", resolve, "--certs", seed_certs_p256, "-d", f"@{body}")
    assert r.returncode == 0, r.stderr
    assert b'"body": "{\\"k\\": [1, 2]}"' in r.stdout


class _Canned(socketserver.BaseRequestHandler):
    """Answers the request for PATH with ANSWERS[PATH], byte for byte, then closes."""

    server: _CannedServer

    def handle(self) -> None:
        try:
            tls = self.server.context.wrap_socket(self.request, server_side=True)
        except OSError:
            return
        with tls:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                head += chunk
            tls.sendall(ANSWERS[head.split(b" ", 2)[1].decode()])


class _CannedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Canned)
        self.context = context


ANSWERS = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n world!\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "/chunked-404": b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: CHUNKED\r\n\r\n"
    b"4\r\nnone\r\n0\r\n\r\n",
    "/until-close": b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it, until close",
    "/no-reason": b"HTTP/1.1 503\r\nContent-Length: 4\r\n\r\ndown",
    "/latin1-reason": b"HTTP/1.1 418 I\xe9m a teapot \r\nContent-Length: 3\r\n\r\ntea",
    "/ansi-reason": b"HTTP/1.1 500 \x1b[31mred\x1b[0m\r\nContent-Length: 0\r\n\r\n",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "/204-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    # Unusual: http.client reads these (the fast path hands it what it received).
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/lf-only": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
    "/folded": b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "/gzip-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nxyz",
    "/bad-status": b"HTTP/1.1 abc Nope\r\n\r\n",
    "/not-http": b"SSH-2.0-OpenSSH_9.2\r\n",
    "/short-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc",
    "/nothing": b"",
}


@pytest.fixture
def canned_server(seed_certs_p256: Path) -> Iterator[int]:
    """A TLS 1.2 server (so a closed connection is not explained by a second handshake)
    that answers with canned bytes; yields its port."""
    import threading

    certs = seed_certs_p256
    context = server_context(certs / "server.crt", certs / "server.key", certs / "ca.crt")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = _CannedServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("path", list(ANSWERS))
def test_answers_read_alike(path: str, seed_certs_p256: Path, canned_server: int) -> None:
    method = ["-X", "HEAD"] if path == "/204-with-length" else []
    r = both(f"https://localhost:{canned_server}{path}", "--certs", seed_certs_p256, *method)
    expected = {
        "/chunked": (0, b"hello world!\n"),
        "/until-close": (0, b"all of it, until close\n"),
        "/two-lengths": (0, b"abc\n"),
        "/continue": (0, b"ok\n"),
        "/lf-only": (0, b"abc\n"),
        "/folded": (0, b"ok\n"),
        "/gzip-coding": (0, b"xyz\n"),
        "/204-with-length": (0, b"\n"),
    }.get(path)
    if expected is not None:
        assert (r.returncode, r.stdout) == expected, r.stderr
    else:
        assert r.returncode == 1
        one_line_error(r.stderr.decode("latin-1"))
    if path == "/latin1-reason":
        assert r.stderr.decode().startswith("error: the server answered 418 Iém a teapot (")
    if path == "/bad-status":
        assert r.stderr.startswith(b"error: invalid HTTP response from localhost:")
        assert b": BadStatusLine HTTP/1.1 abc Nope: check that" in r.stderr
    if path == "/ansi-reason":  # as click.echo, colour codes are dropped when not a terminal
        assert r.stderr.startswith(b"error: the server answered 500 red (")


# -- failures --------------------------------------------------------------------------------


@pytest.mark.interop
def test_untrusted_server_and_name_mismatch(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    url = seed_server(seed_certs_p256)
    r = both(url, "--certs", seed_certs_p256, "--cacert", other_pki.ca)
    assert "the server's certificate is not trusted" in one_line_error(r.stderr.decode())
    port = url.rsplit(":", 1)[1]
    resolve = f"wrong.example:{port}:127.0.0.1"
    r = both(f"https://wrong.example:{port}", "--resolve", resolve, "--certs", seed_certs_p256)
    assert "not valid for 'wrong.example'" in one_line_error(r.stderr.decode())


@pytest.mark.interop
def test_client_certificate_refused_after_a_tls13_handshake(
    seed_certs_p256: Path, other_pki: OtherPKI, seed_server: Callable[[Path], str]
) -> None:
    # Go's server negotiates TLS 1.3: its "bad certificate" arrives on the first read.
    url = seed_server(seed_certs_p256)
    r = both(url, "--cacert", seed_certs_p256 / "ca.crt", "--cert", other_pki.client_cert)
    line = one_line_error(r.stderr.decode())
    assert line.startswith("error: the server refused our client certificate (")
    assert "does not trust its issuer 'O=Elsewhere, CN=Other CA'" in line


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_refused_by_openssl(
    version: ssl.TLSVersion,
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    echo_server: Callable[..., EchoServer],
) -> None:
    srv = echo_server(seed_certs_p256, client_ca=other_pki.ca, max_version=version)
    r = both(srv.url, "--certs", seed_certs_p256)
    assert "the server refused our client certificate (tlsv1 alert unknown ca)" in r.stderr.decode()


def test_network_failures(
    seed_certs_p256: Path, silent_port: int, echo_server: Callable[..., EchoServer]
) -> None:
    certs = seed_certs_p256
    r = both(f"https://127.0.0.1:{free_port()}", "--certs", certs)
    assert one_line_error(r.stderr.decode()).startswith("error: connection refused by 127.0.0.1:")
    r = both(f"https://127.0.0.1:{silent_port}", "--certs", certs, "--timeout", "0.3")
    assert "no TLS handshake with" in one_line_error(r.stderr.decode())
    srv = echo_server(certs)
    r = both(srv.url + "/hang", "--certs", certs, "--timeout", "0.3")
    assert "no response from localhost:" in one_line_error(r.stderr.decode())
    plain = echo_server(None, tls=False)
    r = both(f"https://127.0.0.1:{plain.port}", "--certs", certs)
    assert "does not speak TLS" in one_line_error(r.stderr.decode())


@pytest.mark.parametrize("missing", ["ca.crt", "client.crt", "client.key"])
def test_missing_files(missing: str, seed_certs_p256: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    shutil.copytree(seed_certs_p256, certs)
    (certs / missing).unlink()
    r = both(f"https://127.0.0.1:{free_port()}", "--certs", certs)
    assert r.returncode == 1
    assert f"({certs / missing}): run mtlskit init" in one_line_error(r.stderr.decode())


def test_no_certs_folder_and_bad_key(
    seed_certs_p256: Path, other_pki: OtherPKI, tmp_path: Path
) -> None:
    r = both(cwd=tmp_path)
    assert r.stderr == (
        b"error: CA certificate not found (certs/ca.crt): "
        b"run mtlskit init, or point --certs or --cacert at it\n"
    )
    r = both("--certs", seed_certs_p256, "--key", other_pki.client_key)
    assert "private key does not match certificate" in one_line_error(r.stderr.decode())


@pytest.mark.parametrize(
    "args",
    [
        ["http://localhost:8443"],
        ["https://localhost:99999"],
        ["https://localhost:8443/a b"],
        ["HTTPS://[::1]:1/x#frag", "--timeout", "0"],
        ["https://:8443/"],
        ["-H", "no colon here"],
        ["-d", "@/nonexistent/body"],
        ["--resolve", "nonsense"],
        ["--timeout", "-1"],
    ],
)
def test_bad_usage_alike(args: list[str], seed_certs_p256: Path) -> None:
    r = both("--certs", seed_certs_p256, *args)
    assert r.returncode == 2, r.stderr
    one_line_error(r.stderr.decode())


# -- what the fast path leaves to click ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--json"],
        ["-XPOST"],
        ["--timeout", "soon"],
        ["--no-such-option"],
        ["https://localhost:1", "https://localhost:2"],
        ["--certs", "./certs"],
        ["--certs"],
        ["https://localhost:1/é"],
    ],
)
def test_plan_declines(args: list[str]) -> None:
    assert fastget.plan(args) is None


def test_plan_reads_the_usual_forms(tmp_path: Path) -> None:
    p = fastget.plan(["-X", "put", "u", "--timeout=2.5", "-H", "A: 1", "--header", "B: 2"])
    assert p is not None
    assert (p.url, p.method, p.timeout, p.headers, p.certs) == (
        "u",
        "put",
        2.5,
        ["A: 1", "B: 2"],
        "certs",
    )
    # As click.Path: a file where the folder should be is click's to refuse.
    (tmp_path / "file").write_text("")
    assert fastget.plan(["--certs", str(tmp_path / "file")]) is None
    assert fastget.plan(["--cacert", str(tmp_path)]) is None


def test_what_it_declines_click_runs(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer], tmp_path: Path
) -> None:
    srv = echo_server(seed_certs_p256)
    out = tmp_path / "out.json"
    r = run_fast(srv.url + "/saved", "--certs", seed_certs_p256, "-o", out)
    assert not r.fast
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    assert b'"path": "/saved"' in out.read_bytes()
    r = run_fast(srv.url, "--certs", seed_certs_p256, "-XPOST", "-d", "x")
    assert not r.fast
    assert b'"method": "POST"' in r.stdout
    r = run_fast("--help")
    assert r.returncode == 0 and b"--certs DIRECTORY" in r.stdout
    r = run_fast("--nope")
    assert not r.fast
    assert r.returncode == 2
    assert one_line_error(r.stderr.decode()).startswith("error: No such option '--nope'")
