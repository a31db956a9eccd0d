"""`mtlskit get` as a real process against real servers: the Go seed server and stdlib ones."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.client import (
    ANSWERS,
    EchoServer,
    OtherPKI,
    one_line_error,
)
from tests.support.processes import run_cli

HELLO = b"hello world \n"


@pytest.mark.interop
@pytest.mark.parametrize("certs_fixture", ["seed_certs_p256", "seed_certs_openssl"])
def test_get_prints_body_like_the_go_client(
    certs_fixture: str,
    request: pytest.FixtureRequest,
    seed_server: Callable[[Path], str],
    tmp_path: Path,
) -> None:
    certs: Path = request.getfixturevalue(certs_fixture)
    url = seed_server(certs)
    ours = run_cli("get", url, "--certs", certs)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == (HELLO + b"\n").decode()
    assert ours.stderr == ""

    # Byte for byte what the seed's Go client prints, run from a folder laid out as the seed's.
    import subprocess

    from tests.support.processes import go_binary

    go = subprocess.run(
        [go_binary("seed-client"), "-url", url, "-certs", certs], capture_output=True, check=True
    )
    assert go.stdout.decode() == ours.stdout

    # The defaults are the seed's: ./certs and https://localhost:8443 (here only the port moves).
    shutil.copytree(certs, tmp_path / "certs")
    port = url.rsplit(":", 1)[1]
    plain = run_cli("get", f"localhost:{port}", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == ours.stdout


@pytest.mark.parametrize("certs_fixture", ["seed_certs_p256", "seed_certs_openssl"])
def test_get_against_mtlskit_serve(
    certs_fixture: str, request: pytest.FixtureRequest, mtlskit_server: Callable[[Path], str]
) -> None:
    certs: Path = request.getfixturevalue(certs_fixture)
    r = run_cli("get", mtlskit_server(certs), "--certs", certs)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (HELLO + b"\n").decode()


@pytest.mark.interop
def test_get_json_describes_the_tls_session(
    seed_certs_openssl: Path, seed_server: Callable[[Path], str]
) -> None:
    r = run_cli("get", seed_server(seed_certs_openssl), "--certs", seed_certs_openssl, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == 200
    assert out["body"] == HELLO.decode()
    assert out["headers"]["content-length"] == "13"
    assert out["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert out["cipher"]
    peer = out["peer_certificate"]
    assert peer["subject"] == "C=TH, ST=RB, O=Dev, CN=localhost"
    assert peer["issuer"] == "C=TH, ST=RB, O=IT Sec, CN=CA"
    assert peer["sans"] == ["DNS:localhost", "DNS:www.example.com", "IP:127.0.0.1"]
    assert peer["not_after"].endswith("Z")
    assert peer["not_before"] < peer["not_after"]


def test_method_data_headers_and_repeated_headers(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer], tmp_path: Path
) -> None:
    srv = echo_server(seed_certs_p256)
    r = run_cli(
        "get",
        f"{srv.url}/things?x=1",
        "--certs",
        seed_certs_p256,
        "-X",
        "put",
        "-d",
        "a=1",
        "-H",
        "X-One: 1",
        "-H",
        "Content-Type: text/plain",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    echoed = json.loads(out["body"])
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/things?x=1"
    assert echoed["body"] == "a=1"
    assert echoed["headers"]["X-One"] == "1"
    assert echoed["headers"]["Content-Type"] == "text/plain"
    assert echoed["headers"]["User-Agent"].startswith("mtlskit/")
    assert echoed["client"]["commonName"] == "client"  # our certificate reached the server
    assert out["headers"]["x-twice"] == "a, b"

    # -d alone means POST, curl's form content type; @file and @- read the body.
    body_file = tmp_path / "body.json"
    body_file.write_bytes(b'{"k": [1, 2]}')
    r = run_cli("get", srv.url, "--certs", seed_certs_p256, "-d", f"@{body_file}")
    echoed = json.loads(r.stdout)
    assert echoed["method"] == "POST"
    assert echoed["body"] == '{"k": [1, 2]}'
    assert echoed["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    r = run_cli("get", srv.url, "--certs", seed_certs_p256, "-d", "@-", input="from stdin")
    assert json.loads(r.stdout)["body"] == "from stdin"


def test_output_file(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer], tmp_path: Path
) -> None:
    srv = echo_server(seed_certs_p256)
    out = tmp_path / "out.json"
    r = run_cli("get", srv.url + "/saved", "--certs", seed_certs_p256, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert json.loads(out.read_text())["path"] == "/saved"  # exactly the body, no extra newline
    assert f"wrote {out}" in r.stderr


@pytest.mark.parametrize("status", [403, 404, 500])
def test_error_status_prints_body_and_fails(
    status: int, seed_certs_p256: Path, echo_server: Callable[..., EchoServer]
) -> None:
    srv = echo_server(seed_certs_p256)
    url = f"{srv.url}/status/{status}"
    r = run_cli("get", url, "--certs", seed_certs_p256)
    assert r.returncode == 1
    assert json.loads(r.stdout)["path"] == f"/status/{status}"  # the body still printed
    line = one_line_error(r.stderr)
    assert line.startswith(f"error: the server answered {status} ")
    assert url in line


def test_success_and_redirect_statuses_exit_zero(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer]
) -> None:
    srv = echo_server(seed_certs_p256)
    for status in (201, 204, 302):
        r = run_cli("get", f"{srv.url}/status/{status}", "--certs", seed_certs_p256, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == status


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["http://localhost:8443"], "unsupported URL scheme 'http'"),
        (["-H", "no colon here"], "invalid header 'no colon here'"),
        (["-d", "@/nonexistent/body"], "cannot read request body"),
        (["--resolve", "nonsense"], "invalid --resolve 'nonsense'"),
        (["--timeout", "0"], "timeout must be positive"),
        (["https://localhost:8443/a b"], "has spaces or control characters"),
        (["https://localhost:99999"], "invalid port"),
        (["HTTPS://[::1]:1/x#frag", "--timeout", "0"], "timeout must be positive"),
        (["https://:8443/"], "no host in https://:8443/"),
        (["--timeout", "-1"], "timeout must be positive, not -1: e.g. --timeout 10"),
        (["https://localhost:8443/é"], "non-ASCII characters in its path"),
        (["-X", "GET /x"], "invalid HTTP method 'GET /X'"),
        (["-H", "X-Bad: \u4f60"], "invalid header X-Bad"),
        (["--timeout", "soon"], "Invalid value for '--timeout'"),
        (["--no-such-option"], "No such option '--no-such-option'"),
        (["https://localhost:1", "https://localhost:2"], "unexpected extra argument"),
        (["--cacert"], "Option '--cacert' requires an argument"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(
    args: list[str], expected: str, seed_certs_p256: Path
) -> None:
    r = run_cli("get", "--certs", seed_certs_p256, *args)
    assert r.returncode == 2, r.stderr
    assert expected in one_line_error(r.stderr)
    assert r.stdout == ""


@pytest.mark.interop
def test_cert_and_key_in_one_pem(
    seed_certs_p256: Path, seed_server: Callable[[Path], str], tmp_path: Path
) -> None:
    both = tmp_path / "identity.pem"
    both.write_bytes(
        (seed_certs_p256 / "client.crt").read_bytes()
        + (seed_certs_p256 / "client.key").read_bytes()
    )
    url = seed_server(seed_certs_p256)
    r = run_cli("get", url, "--cacert", seed_certs_p256 / "ca.crt", "--cert", both)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (HELLO + b"\n").decode()


def test_get_loads_neither_cryptography_nor_the_pki_when_it_succeeds(
    seed_certs_p256: Path, mtlskit_server: Callable[[Path], str]
) -> None:
    # cryptography is for explaining failures; a plain request runs on ssl alone.
    url = mtlskit_server(seed_certs_p256)
    command = ["-X", "importtime", "-m", "mtlskit", "get", url, "--certs", str(seed_certs_p256)]
    proc = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == HELLO + b"\n"
    lines = proc.stderr.decode().splitlines()
    modules = {ln.rsplit("|", 1)[1].strip() for ln in lines if ln.startswith("import time:")}
    assert [ln for ln in lines if not ln.startswith("import time:")] == []
    assert {"ssl", "click", "httptools", "mtlskit.client"} <= modules
    # Our own HTTP/1.1 exchange: http.client would bring the email package (~40 ms).
    assert not {m for m in modules if m.split(".")[0] in ("http", "email")}
    assert not {m for m in modules if m.split(".")[0] == "cryptography"}
    assert "mtlskit.pki.store" not in modules


@pytest.mark.parametrize(
    ("args", "method", "path", "sent"),
    [
        (["/things?x=1&y=%20"], "GET", "/things?x=1&y=%20", {}),
        (
            [
                "/",
                "--request=DELETE",
                "--header=User-Agent: other/1",
                "--header",
                "Host: h.example",
            ],
            "DELETE",
            "/",
            {"User-Agent": "other/1", "Host": "h.example"},
        ),
        (["/", "-X", "POST"], "POST", "/", {"Content-Length": "0"}),  # as http.client
        (["/", "-XPOST", "-d", "x"], "POST", "/", {"Content-Length": "1"}),
        (["/status/204"], None, None, {}),
        (["/status/302", "-X", "HEAD"], None, None, {}),
    ],
    ids=["query", "long-forms", "post-empty", "short-form", "204", "head"],
)
def test_request_forms(
    args: list[str],
    method: str | None,
    path: str | None,
    sent: dict[str, str],
    seed_certs_p256: Path,
    echo_server: Callable[..., EchoServer],
) -> None:
    srv = echo_server(seed_certs_p256)
    first, *rest = args
    r = run_cli("get", srv.url + first, "--certs", seed_certs_p256, *rest)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    if method is None:  # no body: 204, and HEAD
        assert r.stdout == "\n"
        return
    echoed = json.loads(r.stdout)
    assert (echoed["method"], echoed["path"]) == (method, path)
    for name, value in sent.items():
        assert echoed["headers"][name] == value


def test_body_from_file_and_resolve(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer], tmp_path: Path
) -> None:
    srv = echo_server(seed_certs_p256)
    body = tmp_path / "body.json"
    body.write_bytes(b'{"k": [1, 2]}')
    url = f"https://www.example.com:{srv.port}/resolved"
    resolve = f"www.example.com:{srv.port}:127.0.0.1"
    r = run_cli("get", url, "--resolve", resolve, "--certs", seed_certs_p256, "-d", f"@{body}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["body"] == '{"k": [1, 2]}'


@pytest.mark.parametrize("path", list(ANSWERS))
def test_unusual_answers(path: str, seed_certs_p256: Path, canned_server: int) -> None:
    method = ["-X", "HEAD"] if path == "/204-with-length" else []
    url = f"https://localhost:{canned_server}{path}"
    r = run_cli("get", url, "--certs", seed_certs_p256, *method)
    expected = {
        "/chunked": "hello world!\n",
        "/until-close": "all of it, until close\n",
        "/continue": "ok\n",
        "/lf-only": "abc\n",
        "/folded": "ok\n",
        "/gzip-coding": "xyz\n",
        "/204-with-length": "\n",
        "/early-hints": "ok\n",
    }.get(path)
    if expected is not None:
        assert (r.returncode, r.stdout, r.stderr) == (0, expected, "")
        return
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    if path == "/latin1-reason":
        assert line.startswith("error: the server answered 418 Iém a teapot (")
    if path == "/ansi-reason":  # colour codes are dropped when stderr is not a terminal
        assert line.startswith("error: the server answered 500 red (")
    if path == "/no-reason":
        assert line == f"error: the server answered 503 ({url}): see the response body"
        assert r.stdout == "down\n"
    if path == "/bad-status":
        assert line.startswith(f"error: invalid HTTP response from localhost:{canned_server}")
        assert ": BadStatusLine HTTP/1.1 abc Nope: check that" in line
    if path in ("/nothing", "/short-body"):
        assert f"localhost:{canned_server} closed the connection without answering" in line


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_refused_by_openssl(
    version: ssl.TLSVersion,
    seed_certs_p256: Path,
    other_pki: OtherPKI,
    echo_server: Callable[..., EchoServer],
) -> None:
    srv = echo_server(seed_certs_p256, client_ca=other_pki.ca, max_version=version)
    r = run_cli("get", srv.url, "--certs", seed_certs_p256)
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "the server refused our client certificate (tlsv1 alert unknown ca)" in line


def test_click_refuses_a_file_for_a_folder_and_the_reverse(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    r = run_cli("get", "--certs", tmp_path / "file")
    assert r.returncode == 2
    assert "Invalid value for '--certs'" in one_line_error(r.stderr)
    r = run_cli("get", "--cacert", tmp_path)
    assert r.returncode == 2
    assert "Invalid value for '--cacert'" in one_line_error(r.stderr)


def test_help_lists_each_option_once() -> None:
    r = run_cli("get", "--help")
    assert r.returncode == 0
    for option in ("--certs DIRECTORY", "--cacert FILE", "--cert FILE", "--key FILE"):
        assert r.stdout.count(option) == 1, option
    for option in ("--timeout SECONDS", "--resolve HOST:PORT:ADDRESS", "-X, --request METHOD"):
        assert option in r.stdout


def test_connection_sends_without_nagle(
    seed_certs_p256: Path, mtlskit_server: Callable[[Path], str]
) -> None:
    # With Nagle's algorithm on, the request waits for the ACK of our last handshake
    # flight; a server with nothing to send yet (mtlskit serve keeps its TLS 1.3 tickets
    # for the first response) delays that ACK by ~40 ms.
    import socket

    from mtlskit.connect import open_connection

    conn = open_connection(mtlskit_server(seed_certs_p256), certs=seed_certs_p256, timeout=10)
    try:
        assert conn.tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.tls.close()


def test_client_tls_options_are_one_declaration() -> None:
    # get, proxy client and agent present a client certificate: the same options, worded
    # alike; only what differs per command does (get's --cacert as curl, where the key
    # and the agent's CA are found without the option).
    import click

    from mtlskit.cli.client_cmds import get
    from mtlskit.cli.proxy_cmds import proxy
    from mtlskit.cli.service_cmds import agent

    def options(command: click.Command) -> dict[str | None, click.Option]:
        return {p.name: p for p in command.params if isinstance(p, click.Option)}

    ours, tunnel = options(get), options(proxy.commands["client"])
    for name in ("certs", "ca", "cert", "key"):
        assert repr(ours[name].type) == repr(tunnel[name].type), name
    for name in ("certs", "ca", "cert"):
        assert ours[name].help == tunnel[name].help, name
    assert ours["ca"].opts == ["--cacert"] and tunnel["ca"].opts == ["--ca"]
    assert "next to --cert as NAME.key" in str(ours["key"].help)
    assert "[certs/client.key]" in str(tunnel["key"].help)
    assert "[ca.crt next to --cert]" in str(options(agent)["ca"].help)


def test_request_framing_and_response_headers_in_order(
    seed_certs_p256: Path, echo_server: Callable[..., EchoServer]
) -> None:
    from mtlskit.client import request

    srv = echo_server(seed_certs_p256)
    data = bytes(range(256)) * 4096  # 1 MiB: the request and its echo take many reads
    r = request("POST", srv.url + "/up", certs=seed_certs_p256, data=data, timeout=10)
    echoed = json.loads(r.body)
    assert echoed["body"] == data.decode("utf-8", "replace")
    sent = echoed["headers"]
    assert sent["Host"] == f"localhost:{srv.port}"
    assert sent["Content-Length"] == str(len(data))
    assert (sent["Connection"], sent["Accept-Encoding"], sent["Accept"]) == (
        "close",
        "identity",
        "*/*",
    )
    names = [k for k, _ in r.headers]
    twice = names.index("X-Twice")
    assert r.headers[twice : twice + 2] == (("X-Twice", "a"), ("X-Twice", "b"))
    assert r.header("content-length") == str(len(r.body))


def test_host_header_names_the_port_and_brackets_ipv6() -> None:
    from mtlskit.client import _host_header
    from mtlskit.connect import parse_target

    for url, host in [
        ("https://localhost:8443/", "localhost:8443"),
        ("https://example.com/", "example.com"),
        ("https://[::1]:8443/x", "[::1]:8443"),
        ("https://[::1]/", "[::1]"),
        ("https://bücher.example:444/", "xn--bcher-kva.example:444"),
    ]:
        assert _host_header(parse_target(url, None)) == host, url


def test_answer_framing_without_closing(seed_certs_p256: Path, canned_server: int) -> None:
    from mtlskit.client import request
    from mtlskit.errors import ReadTimeout

    base = f"https://localhost:{canned_server}"
    # A HEAD's answer ends with its headers, whatever Content-Length says.
    r = request("HEAD", base + "/head-open", certs=seed_certs_p256, timeout=5)
    assert (r.status, r.body, r.header("content-length")) == (200, b"", "5")
    # An interim 1xx is skipped with its headers.
    r = request("GET", base + "/early-hints", certs=seed_certs_p256, timeout=5)
    assert (r.status, r.body, r.header("link"), r.header("x-final")) == (200, b"ok", None, "1")
    # A body that stops coming is a read timeout, as a response that never starts.
    with pytest.raises(ReadTimeout, match=f"no response from localhost:{canned_server} within"):
        request("GET", base + "/stall-body", certs=seed_certs_p256, timeout=0.3)
