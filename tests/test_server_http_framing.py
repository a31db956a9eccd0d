"""HTTP/1.1 framing under misbehaving apps and peers (issue 10, defects 1-8 of its Why).

Responses: an app cannot write more than its Content-Length, end short of it, send an
invalid status, header or body type; each is logged with the request and answered with
500 (nothing sent yet) or an aborted connection, never bytes a client could read as the
next response. Requests: framing errors after the head get 400 at once in ASGI mode as
in hello mode (also second in a pipeline), trailers are not merged, bodies over
--max-body-size get 413, heads and bodies that stall get 408, a client that reads
nothing is dropped; HTTP/1.0 gets close-delimited bodies and an honest Connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import (
    Served,
    client_ctx,
    make_pki,
    read_until_closed,
    start_serve,
    stop_all,
    tls_socket,
)

APP = r"""
import asyncio, json

SEEN = {}

def q(scope):
    return dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)

async def read_body(receive):
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    if path == "/overlong":  # declares 5 bytes, sends a second response after them
        start["headers"].append((b"content-length", b"5"))
        await send(start)
        smuggled = b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 2\r\n\r\nhi"
        if q(scope).get("split"):
            await send({"type": "http.response.body", "body": b"hello", "more_body": True})
            await send({"type": "http.response.body", "body": smuggled})
        else:
            await send({"type": "http.response.body", "body": b"hello" + smuggled})
    elif path == "/short":
        start["headers"].append((b"content-length", b"10"))
        await send(start)
        if q(scope).get("split"):
            await send({"type": "http.response.body", "body": b"hello", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/header":  # a header the app got wrong, chosen by the test
        kind = q(scope)["kind"]
        bad = {
            "name-colon": (b"Set-Cookie: injected=1; x", b"y"),
            "name-space": (b"x y", b"z"),
            "name-empty": (b"", b"z"),
            "value-nul": (b"x", b"a\x00b"),
            "value-crlf": (b"x", b"a\r\nSet-Cookie: evil=1"),
            "value-ctl": (b"x", b"a\x1bb"),
            "length-abc": (b"content-length", b"abc"),
            "length-negative": (b"content-length", b"-1"),
            "str-name": ("x", b"y"),
            "not-pair": (b"x",),
        }[kind]
        start["headers"].append(bad)
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/lengths":  # Content-Length fields, as many as asked: ?n=2&n=3
        lengths = [p[2:] for p in scope["query_string"].decode().split("&")]
        start["headers"] += [(b"content-length", n.encode()) for n in lengths]
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/status":
        raw = q(scope)["s"]
        await send({"type": "http.response.start", "status": int(raw) if raw.lstrip("-").isdigit() else raw, "headers": []})
        await send({"type": "http.response.body", "body": b"body after an odd status"})
    elif path == "/intbody":
        await send(start)
        await send({"type": "http.response.body", "body": 16})
    elif path == "/echo":  # the body back; what receive() said is kept for /seen
        body = await read_body(receive)
        SEEN["echo"] = "disconnect" if body is None else f"{len(body)} bytes"
        if body is None:
            return
        await send(start)
        await send({"type": "http.response.body", "body": body})
    elif path == "/seen":
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(SEEN).encode()})
    elif path == "/headers":
        await read_body(receive)
        data = json.dumps([[k.decode(), v.decode()] for k, v in scope["headers"]]).encode()
        await send(start)
        await send({"type": "http.response.body", "body": data})
    elif path == "/stream":
        await send(start)
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slowread":  # takes its time before it reads the body
        await asyncio.sleep(float(q(scope)["wait"]))
        body = await read_body(receive)
        await send(start)
        await send({"type": "http.response.body", "body": b"%d bytes" % len(body)})
    elif path == "/forever":
        await send(start)
        while True:
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
    else:
        await send(start)
        await send({"type": "http.response.body", "body": b"fine"})
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("apps")
    (folder / "framing_app.py").write_text(textwrap.dedent(APP))
    return folder


LIMITS = ("--max-body-size", "1000", "--head-timeout", "1", "--body-timeout", "1")
LIMITS += ("--write-timeout", "1")


@pytest.fixture(scope="module")
def asgi(pki: Path, app_dir: Path) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = start_serve(procs, pki, app_dir, "framing_app:app", *LIMITS, cwd=app_dir)
        yield served
        assert served.stop() == 0
        assert "Traceback" not in served.log().replace("exception in the ASGI app", "")
    finally:
        stop_all(procs)


@pytest.fixture(scope="module")
def hello(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = start_serve(procs, pki, tmp_path_factory.mktemp("hello"), *LIMITS)
        yield served
        assert served.stop() == 0
        assert "Traceback" not in served.log()
    finally:
        stop_all(procs)


@pytest.fixture(params=["asgi", "hello"])
def both(request: pytest.FixtureRequest) -> Served:
    served: Served = request.getfixturevalue(request.param)
    return served


def exchange(served: Served, data: bytes, timeout: float = 8) -> tuple[bytes, float]:
    """Send ``data`` on one connection; everything until the server closes, and when."""
    with tls_socket(served.port, client_ctx(served.certs)) as s:
        started = time.monotonic()
        s.sendall(data)
        s.settimeout(timeout)
        return read_until_closed(s), time.monotonic() - started


def responses(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The responses in ``data``, framed as a client frames them: (status, head, body)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), head
        status = int(head.split(b" ")[1])
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if b"content-length" in fields:
            n = int(fields[b"content-length"])
            body, data = data[:n], data[n:]
        elif fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size, _, data = data.partition(b"\r\n")
                n = int(size, 16)
                body, data = body + data[:n], data[n + 2 :]
                if n == 0:
                    break
        else:
            body, data = data, b""
        out.append((status, head, body))
    return out


def statuses(data: bytes) -> list[int]:
    return [status for status, _, _ in responses(data)]


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), extra)


# -- 1. an app cannot forge the next response --------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
def test_more_body_than_content_length_is_never_written(asgi: Served, split: bool) -> None:
    path = "/overlong?split=1" if split else "/overlong"
    data, _ = exchange(asgi, get(path) + get("/next"))
    assert b"X-Smuggled" not in data and b"fine" not in data
    if split:  # the declared 5 bytes went out whole before the app overran them
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nhello")
    else:
        assert statuses(data) == [500]
    asgi.wait_log(f"invalid response from the ASGI app (GET {path}): the body is longer than")


def test_httpx_reusing_the_connection_sees_no_smuggled_response(asgi: Served) -> None:
    """httpx keeps the connection for the next request: it must never read the app's
    extra bytes as that request's response. (When the declared bytes went out whole, the
    close, or the reset of the aborted response, may come after httpx sent the next
    request on it: a disconnect, not a forgery.)"""
    with httpx.Client(verify=client_ctx(asgi.certs)) as client:
        base = f"https://localhost:{asgi.port}"
        for path in ("/overlong?split=1", "/overlong"):
            with contextlib.suppress(httpx.HTTPError):  # the response may be cut short
                client.get(base + path)
            try:
                r = client.get(base + "/next")
            except (httpx.RemoteProtocolError, httpx.ReadError):
                r = client.get(base + "/next")
            assert (r.status_code, r.text) == (200, "fine")
            assert "x-smuggled" not in r.headers


def test_less_body_than_content_length_is_logged_and_closes(asgi: Served) -> None:
    data, took = exchange(asgi, get("/short?split=1") + get("/next"))
    assert data.endswith(b"\r\n\r\nhello") and b"fine" not in data  # then closed, not kept
    assert took < 3
    asgi.wait_log("(GET /short?split=1): the body ended 5 bytes short of its Content-Length")
    data, _ = exchange(asgi, get("/short") + get("/next"))  # nothing sent yet: a 500
    assert statuses(data) == [500]


def test_two_different_content_lengths_are_a_500_every_time(asgi: Served) -> None:
    """Checked on every response, also when the fields are ones seen (and cached) before."""
    for _ in range(2):
        data, _ = exchange(asgi, get("/lengths?n=2") + get("/lengths?n=2&n=3"))
        assert statuses(data) == [200, 500], data
        assert data.count(b"content-length: 2\r\n") == 1
    asgi.wait_log("(GET /lengths?n=2&n=3): two different Content-Length headers")
    data, _ = exchange(asgi, get("/lengths?n=2&n=2", b"Connection: close\r\n"))
    assert statuses(data) == [200] and data.count(b"content-length: 2\r\n") == 1


# -- 4. nothing the app sends goes out unchecked ------------------------------------------------

BAD_HEADERS = ["name-colon", "name-space", "name-empty", "value-nul", "value-crlf", "value-ctl"]
BAD_HEADERS += ["length-abc", "length-negative", "str-name", "not-pair"]


@pytest.mark.parametrize("kind", BAD_HEADERS)
def test_invalid_response_headers_are_a_500(asgi: Served, kind: str) -> None:
    data, _ = exchange(asgi, get(f"/header?kind={kind}") + get("/next"))
    assert statuses(data) == [500], data
    assert b"injected" not in data and b"evil" not in data and b"\x00" not in data
    assert b"Connection: close" in data
    asgi.wait_log(f"invalid response from the ASGI app (GET /header?kind={kind})")


@pytest.mark.parametrize(
    "status", ["0", "99", "100", "101", "199", "600", "999", "1000", "-1", "x"]
)
def test_statuses_outside_200_599_are_a_500(asgi: Served, status: str) -> None:
    data, _ = exchange(asgi, get(f"/status?s={status}") + get("/next"))
    assert statuses(data) == [500], data
    assert b"body after" not in data


def test_a_body_that_is_not_bytes_is_a_500(asgi: Served) -> None:
    data, _ = exchange(asgi, get("/intbody"))
    assert statuses(data) == [500] and b"\x00" * 16 not in data
    asgi.wait_log("(GET /intbody): the body must be bytes, not int")


# -- 2. request framing errors after the head ---------------------------------------------------

BAD_BODIES = {
    "chunk-data-overrun": b"5\r\nhelloXX0\r\n\r\n",
    "chunk-size-negative": b"-1\r\nx\r\n0\r\n\r\n",
    "chunk-size-hex-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": b"5 \r\nhello\r\n0\r\n\r\n",
    "content-length-trailer": b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
}


def chunked_post(path: str, body: bytes, te: bytes = b"chunked") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n%s" % (
        path.encode(),
        te,
        body,
    )


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
@pytest.mark.parametrize("second", [False, True], ids=["first", "second-in-pipeline"])
def test_a_bad_chunked_body_is_a_400_at_once(both: Served, name: str, second: bool) -> None:
    request = chunked_post("/echo", BAD_BODIES[name])
    data, took = exchange(both, (get("/next") if second else b"") + request)
    assert statuses(data) == ([200, 400] if second else [400]), data
    assert took < 3, "at once, not at a timeout"


def test_the_app_reading_a_broken_body_gets_a_disconnect(asgi: Served) -> None:
    data, _ = exchange(asgi, chunked_post("/echo", b"5\r\nhello\r\n") + b"zz\r\n")
    assert statuses(data) == [400]
    seen, _ = exchange(asgi, get("/seen", b"Connection: close\r\n"))
    assert b'"echo": "disconnect"' in seen


def test_an_unknown_transfer_coding_is_a_400(both: Served) -> None:
    data, took = exchange(both, chunked_post("/echo", b"abc", te=b"xchunked"))
    assert statuses(data) == [400] and took < 3


def test_over_100_trailer_fields_are_refused(both: Served) -> None:
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(120))
    data, took = exchange(both, chunked_post("/echo", b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"))
    assert statuses(data) == [431] and took < 3


# -- 3. a body shorter than its Content-Length --------------------------------------------------


def test_a_short_body_ends_in_408_and_a_log_line(both: Served) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello"
    data, took = exchange(both, request)
    assert statuses(data) == [408] and 0.5 < took < 4  # the clock is coarse: 1 s +- 0.25
    both.wait_log("request body stalled for 1s (5 bytes of 10 received) (408)")


def test_a_short_body_before_a_pipelined_request(asgi: Served) -> None:
    """The next request's first bytes are body (as Content-Length says); what is left of it
    is not a request: 400 and a close, not a wait."""
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello" + get("/next")
    data, took = exchange(asgi, request)
    assert statuses(data) == [200, 400] and took < 3
    assert b"helloGET /" in data


# -- 5. time limits on heads and on writing -----------------------------------------------------


def test_a_slow_head_is_cut_at_the_head_timeout(both: Served) -> None:
    with tls_socket(both.port, client_ctx(both.certs)) as s:
        started = time.monotonic()
        s.settimeout(0.25)
        head = get("/", b"X-Slow: " + b"a" * 40 + b"\r\n")
        answer = b""
        for byte in head:  # one byte every 0.25 s: 15 s for the whole head
            try:
                s.sendall(bytes([byte]))
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except (ssl.SSLError, ConnectionError):
                break
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - started
    assert statuses(answer) == [408] and took < 4
    both.wait_log("request head not complete after 1s (408)")


def test_a_client_that_reads_nothing_is_dropped(asgi: Served) -> None:
    raw = socket.create_connection(("127.0.0.1", asgi.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with client_ctx(asgi.certs).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(get("/forever"))
        asgi.wait_log("it read nothing of its response for 1s (--write-timeout)", timeout=15)


def test_a_body_the_app_has_not_taken_yet_is_no_idle_connection(
    pki: Path, app_dir: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Reading pauses while the app lets more than 64 KiB of body wait: that wait is the
    app's, so neither the body timeout nor the idle timeout cuts the connection (it was
    cut after --idle-timeout with no log line)."""
    args = ("--idle-timeout", "1", "--body-timeout", "1", "--quiet")
    served = start_serve(procs, pki, app_dir, "framing_app:app", *args, cwd=app_dir)
    body = b"a" * 300_000
    request = b"POST /slowread?wait=2.5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    data, took = exchange(served, request + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert statuses(data) == [200] and data.endswith(b"300000 bytes"), data[-200:]
    assert took > 2
    assert served.stop() == 0


def test_an_http2_request_line_is_one_505_and_one_log_line(hello: Served) -> None:
    data, _ = exchange(hello, b"GET /two HTTP/2.0\r\nHost: x\r\n\r\n")
    assert statuses(data) == [505]
    hello.wait_log("HTTP/2.0 request (505)")
    assert "new request GET /two" not in hello.log()


# -- 6. HTTP/1.0 ------------------------------------------------------------------------------------


def test_http10_keep_alive_is_said_and_kept(both: Served) -> None:
    request = b"GET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with tls_socket(both.port, client_ctx(both.certs)) as s:
        for _ in range(2):
            s.sendall(request)
            data = s.recv(4096)
            head = data.split(b"\r\n\r\n")[0]
            assert b"\r\nConnection: keep-alive" in head and b"\r\nContent-Length: " in head
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        last = read_until_closed(s)
    assert b"\r\nConnection: close" in last


def test_http10_streams_are_close_delimited(asgi: Served) -> None:
    for request in (
        b"GET /stream HTTP/1.0\r\n\r\n",
        b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ):
        data, _ = exchange(asgi, request)
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
        assert b"\r\nConnection: close" in head
        assert body == b"part0;part1;part2;"


# -- 7. trailers --------------------------------------------------------------------------------------


def test_trailers_are_not_merged_into_the_headers(asgi: Served) -> None:
    body = b"5\r\nhello\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n"
    data, _ = exchange(asgi, chunked_post("/headers", body) + get("/", b"Connection: close\r\n"))
    headers = data.split(b"\r\n\r\n", 1)[1]
    assert b'["host", "x"]' in headers
    assert b"evil" not in headers and b"x-trailer" not in headers


# -- 8. request body limit --------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_a_413_at_once(both: Served) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
    data, took = exchange(both, request)
    assert statuses(data) == [413] and took < 3
    both.wait_log("a body of 50000000 bytes is over --max-body-size (413)")


def test_a_chunked_body_over_the_limit_is_a_413(both: Served) -> None:
    chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
    data, took = exchange(both, chunked_post("/echo", chunk * 2 + b"0\r\n\r\n"))
    assert statuses(data) == [413] and took < 3


def test_a_body_at_the_limit_is_served(asgi: Served) -> None:
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 1000
    data, _ = exchange(asgi, request + get("/", b"Connection: close\r\n"))
    assert statuses(data) == [200, 200] and b"a" * 1000 in data


def test_the_default_limit_is_1_mib(
    pki: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    served = start_serve(procs, pki, tmp_path, "--quiet")
    ok = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + b"a" * 1048576
    too_large = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n"
    data, _ = exchange(served, ok + too_large)
    assert statuses(data) == [200, 413]
    assert served.stop() == 0


def test_size_and_timeout_options_are_checked(tmp_path: Path) -> None:
    from tests.support.processes import run_cli

    for args, words in [
        (("--max-body-size", "ten"), "is not a size"),
        (("--max-body-size", "-1"), "is not a size"),
        (("--head-timeout", "0"), "--head-timeout must be more than 0 seconds"),
        (("--write-timeout", "-1"), "--write-timeout must be more than 0 seconds"),
    ]:
        r = run_cli("serve", "--certs", tmp_path, *args)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_head_responses_have_no_body_and_keep_the_connection(asgi: Served) -> None:
    request = b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n"
    data, _ = exchange(
        asgi, request % b"/next" + request % b"/stream" + get("/", b"Connection: close\r\n")
    )
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nContent-Length: 4" in first
    second, rest = rest.split(b"\r\n\r\n", 1)
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in second
    assert b"Connection: close" not in first + second  # kept alive: the GET is answered
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"fine")
