"""Issue 11, with processes: what `mtlskit serve` refuses at start-up, plain HTTP on the
TLS port (curl, both TLS engines), `get -o` like curl, two CAs of one name seen from
the client, and the Python API (Response.json(), run()'s log lines, ServerConfig)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtlskit.client import get
from mtlskit.errors import MtlsError, ProtocolError
from mtlskit.pki.seed import init_seed
from mtlskit.server import ServerConfig
from tests.support.processes import free_port, run_cli, wait_for_port
from tests.support.server import start_serve


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_seed(folder)
    return folder


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert "Traceback" not in stderr
    return stderr.rstrip("\n")


def test_serve_refuses_at_start_what_every_handshake_would_fail(certs: Path) -> None:
    r = run_cli("serve", "--certs", certs, "--cert", certs / "client.crt", "--key",
                certs / "client.key", "--host", "127.0.0.1", "--port", "0", timeout=30)  # fmt: skip
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        "error: not a server certificate: its extendedKeyUsage has no serverAuth (clientAuth), "
        f"so clients refuse it ({certs / 'client.crt'}): issue a server certificate: "
        "mtlskit issue server NAME (or --profile server-client)"
    )
    r = run_cli("serve", "--certs", certs, "--ca", certs / "server.crt", "--host", "127.0.0.1",
                "--port", "0", timeout=30)  # fmt: skip
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        "error: the CA file holds no CA certificate (CN=localhost,O=Dev,ST=RB,C=TH: no "
        f"basicConstraints CA:TRUE): no client could connect ({certs / 'server.crt'}): "
        "pass the CA that issues the client certificates (its ca.crt) with --ca"
    )
    # a server-client certificate serves (serverAuth is there)
    r = run_cli("issue", "server-client", "both", "--ca-dir", certs)
    assert r.returncode == 0, r.stderr


def test_get_output_into_a_missing_folder_fails_like_curl(
    certs: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, certs, tmp_path)
    url = f"https://localhost:{served.port}"
    out = tmp_path / "no" / "such" / "out.txt"
    r = run_cli("get", url, "--certs", certs, "-o", out)
    assert r.returncode == 2
    assert one_line(r.stderr) == (
        f"error: cannot write the body: folder {out.parent} does not exist ({out}): "
        "create it, or pass --create-dirs (as curl)"
    )
    assert not (tmp_path / "no").exists()
    assert "new request" not in served.log()  # refused before the request, not after
    c = subprocess.run(["curl", "-sS", "-o", str(out), "http://127.0.0.1:9/"], capture_output=True)
    assert c.returncode != 0  # curl refuses a missing folder too (before it even connects)
    r = run_cli("get", url, "--certs", certs, "-o", out, "--create-dirs")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"hello world \n"


@pytest.mark.parametrize("engine", ["openssl", "stdlib"])
def test_plain_http_on_the_tls_port_gets_a_400(
    engine: str, certs: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, certs, tmp_path, env={**os.environ, "MTLSKIT_TLS_ENGINE": engine})
    for method in ("GET", "DELETE"):  # OpenSSL 3.0 itself only knows GET, POST, HEAD, PUT
        c = subprocess.run(
            ["curl", "-sS", "-i", "-X", method, f"http://127.0.0.1:{served.port}/"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert c.returncode == 0, c.stderr  # not curl's exit 52, "empty reply from server"
        head, _, body = c.stdout.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 400 Bad Request\r\n") and "Connection: close" in head
        assert body == (
            "this port speaks HTTPS with client certificates: use https:// and a client "
            "certificate\n"
        )
    # then the server closes: nothing more is read on that connection
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got.count(b"HTTP/1.1 400") == 1
    log = served.wait_log("plain HTTP sent to the TLS port (not_tls)")
    assert log.count("plain HTTP sent to the TLS port (not_tls)") == 3  # one line per refusal
    # and it keeps serving HTTPS
    assert get(f"https://localhost:{served.port}", certs=certs).text == "hello world \n"


def test_the_client_tells_two_cas_of_one_name_apart(
    certs: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    twin = tmp_path / "twin"
    same = "/C=TH/ST=RB/O=IT Sec/CN=CA"
    assert run_cli("ca", "create", "--dir", twin, "--subject", same).returncode == 0
    assert run_cli("issue", "client", "bob", "--ca-dir", twin).returncode == 0
    served = start_serve(procs, certs, tmp_path)
    r = run_cli("get", f"https://localhost:{served.port}", "--certs", certs,
                "--cert", twin / "bob.crt")  # fmt: skip
    line = one_line(r.stderr)
    assert r.returncode == 1 and "the server does not trust its issuer" in line
    assert "another CA with the same name" in line and line.count("key id ") == 2


def test_response_json_raises_an_mtlskit_error(
    certs: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, certs, tmp_path)
    r = get(f"https://localhost:{served.port}", certs=certs)
    with pytest.raises(ProtocolError) as caught:
        r.json()  # "hello world \n"
    assert isinstance(caught.value, MtlsError)
    assert caught.value.one_line().startswith(
        "the response body is not JSON (text/plain; charset=utf-8, 13 bytes): Expecting value"
    )


RUN_FROM_PYTHON = """
import logging, sys
from pathlib import Path
from mtlskit.server import ServerConfig, run
if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.INFO, format="APP %(name)s: %(message)s")
run(ServerConfig(certs=Path(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[3])))
"""


@pytest.mark.parametrize("logging_", ["unconfigured", "configured"])
def test_run_from_python_logs_like_the_cli(
    logging_: str, certs: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RUN_FROM_PYTHON), certs, logging_, str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    procs.append(proc)
    wait_for_port(port, proc)
    assert get(f"https://localhost:{port}", certs=certs).status == 200
    proc.terminate()
    assert proc.wait(timeout=15) == 0
    lines = log_path.read_text().splitlines()
    if logging_ == "unconfigured":  # the CLI's lines, in the CLI's format
        assert any(line.endswith(f" listen on https://127.0.0.1:{port}") for line in lines), lines
        assert any(line.endswith(" new request GET / from CN=client") for line in lines), lines
        assert all(line[:4].isdigit() and line[4] == "/" for line in lines), lines
    else:  # the program's own logging decides
        assert f"APP mtlskit.server: listen on https://127.0.0.1:{port}" in lines, lines
        assert "APP mtlskit.server: new request GET / from CN=client" in lines, lines


def test_server_config_docstring_says_every_default() -> None:
    doc = ServerConfig.__doc__ or ""
    for f in dataclasses.fields(ServerConfig):
        assert f"``{f.name}``" in doc, f.name
    assert '``host`` (``""``: every interface' in doc
